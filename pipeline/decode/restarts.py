"""Where decoding may restart: keyframes that are independently decodable (IDR pictures of H.264/HEVC,
found by parsing the packet's NAL units; any keyframe of VP8/VP9) and also a clean cut in presentation
time. Packets between two restart points that no sample needs may be left out undecoded."""
from __future__ import annotations

from typing import Iterator

import numpy as np


_RESTART_CODECS = ("h264", "hevc", "vp8", "vp9")   # keyframes checked (IDR) or independent by definition


def restart_points(decode_pts: np.ndarray, clean_key: np.ndarray) -> np.ndarray:
    """Pts of the packets (decode order in, pts out) at which decoding can start afresh, so that the
    packets before one may be dropped without changing any frame from it on: an independently decodable
    keyframe that is also a clean cut in time — every packet before it in decode order is shown before
    it, and every packet after it is shown after it (no open-GOP leading pictures, which reference
    frames before the keyframe). The GOPs between restart points are then contiguous ranges of pts."""
    n = len(decode_pts)
    if n == 0 or not clean_key.any():
        return np.zeros(0, dtype=np.int64)
    before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min], decode_pts[:-1]]))
    after = np.minimum.accumulate(np.concatenate([decode_pts[1:], [np.iinfo(np.int64).max]])[::-1])[::-1]
    ok = clean_key & (decode_pts > before) & (decode_pts < after)
    return decode_pts[ok]


def nal_length_size(extradata: bytes | None, codec: str) -> int:
    """Bytes of the NAL length prefix of H.264/HEVC packets in MP4/MKV (avcC/hvcC), 0 for Annex B."""
    extra = bytes(extradata or b"")
    if codec == "h264" and len(extra) > 4 and extra[0] == 1:
        return (extra[4] & 3) + 1
    if codec == "hevc" and len(extra) > 21 and extra[0] == 1:
        return (extra[21] & 3) + 1
    return 0


def independent(packet, codec: str, nal_length: int) -> bool:
    """Whether a keyframe packet can be decoded with nothing before it: an IDR picture for H.264/HEVC
    (an open-GOP I-frame, also flagged as a keyframe, is not), any keyframe for VP8/VP9."""
    if codec not in _RESTART_CODECS:
        return False
    if codec in ("vp8", "vp9"):
        return True
    idr = {5} if codec == "h264" else {19, 20}
    for unit in _nal_units(bytes(packet), nal_length):
        kind = unit[0] & 0x1F if codec == "h264" else (unit[0] >> 1) & 0x3F
        if (codec == "h264" and 1 <= kind <= 5) or (codec == "hevc" and kind < 32):   # the first slice
            return kind in idr
    return False


def _nal_units(data: bytes, nal_length: int) -> Iterator[bytes]:
    """The NAL units of a packet: length-prefixed (`nal_length` bytes) or Annex B start codes (0)."""
    if nal_length:
        pos = 0
        while pos + nal_length <= len(data):
            size = int.from_bytes(data[pos:pos + nal_length], "big")
            pos += nal_length
            if size <= 0:
                return
            yield data[pos:pos + size]
            pos += size
        return
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        pos = data.find(b"\x00\x00\x01", start)
        unit = data[start:pos if pos >= 0 else len(data)].rstrip(b"\x00")
        if unit:
            yield unit
