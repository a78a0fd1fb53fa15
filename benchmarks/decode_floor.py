"""The decode floor: the least work that delivers the sampled frames resized, measured directly (a server
that `decode_throughput.py` runs beside the peers).

    python benchmarks/decode_floor.py      # one JSON request a line on stdin, one answer a line on stdout

A request is `decode_peers.py`'s {"path", "clips", "size"} plus "crop" (bool). On one thread the floor
decodes exactly these frames and no other:
  - every reference frame from the restart point at or before a sampled frame up to that frame, in
    decode order (restart points as the probe finds them, `pipeline.decode.restarts`): a decoder that
    does not read reference lists cannot tell which of them the sampled frame depends on, and
  - the sampled frames that are not reference frames.
Packets of the other non-reference frames never reach the decoder, GOPs are read only up to their last
sampled frame, GOPs without one not at all, and reading stops after the last needed packet. Each distinct
sampled frame is then converted to RGB (rgb24, one swscale context, as the pipeline does) and resized
with the project's kernel (`bilinear.resize` into a preallocated buffer, the loop body of
`transforms.resize_short_side`): the whole frame, or with "crop" only the centre size × size window (the
pipeline's `decode.centre_crop`). No clip is assembled: a padding frame is resized once.

Which frames are references comes from libavcodec: a decode with `skip_frame=NONREF` returns exactly
them (once per file, not timed; for H.264 also checked against every packet's nal_ref_idc). The probe
(timestamps, restart points) is not timed either: the floor is given its plan, where `ours` probes the
file inside its time; `probe_s` says what a probe costs (same process, same core).

The answer: {"wall_s", "cpu_s", "convert_s", "resize_s", "probe_s", "frames" (decoded), "resized",
"checksum" (the first clip, assembled after the clock stops), "counts"}. Every answer is checked after
the clock stops: the decoder returned each planned frame once and no other, and every sampled frame,
resized, equals the same frame from a full decode of the file (made once per file, not timed), so
nothing a sampled frame needs was left out. A failed check raises `FloorMismatch` (the server ends).
"""
from __future__ import annotations

import json
import os
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(1, ROOT)

from measure import cpu_seconds  # noqa: E402
from pipeline.decode import bilinear, probe_video  # noqa: E402
from pipeline.decode.restarts import _nal_units, nal_length_size  # noqa: E402
from pipeline.decode.transforms import crop_offsets  # noqa: E402


class FloorMismatch(RuntimeError):
    """The floor's decode did not produce exactly the frames its plan says it decodes."""


@dataclass(frozen=True)
class FloorPlan:
    """What the floor gives the decoder. send: pts of the packets decoded; last: the pts of the last of
    them in decode order (reading stops there); slots: pts of each distinct sampled frame → its row in the
    output; first_clip: the rows of the first clip's frames; counts: frames of the file by kind."""

    send: frozenset[int]
    last: int
    slots: dict[int, int]
    first_clip: list[int]
    counts: dict[str, int]


def scan(path: str) -> tuple[list[int], set[int]]:
    """(pts of every packet in decode order, pts of the reference frames), the latter from a decode
    with skip_frame=NONREF; for H.264 checked against the nal_ref_idc of each packet's first slice."""
    import av

    order, refs, nal_refs = [], set(), set()
    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count, ctx.skip_frame = 1, "NONREF"
        h264 = ctx.name == "h264"
        nal_length = nal_length_size(ctx.extradata, "h264") if h264 else 0
        for packet in container.demux(stream):
            if packet.size:
                order.append(packet.pts)
                if h264 and _first_slice_is_reference(bytes(packet), nal_length):
                    nal_refs.add(packet.pts)
            refs.update(frame.pts for frame in ctx.decode(packet))
    if h264 and nal_refs != refs:
        raise FloorMismatch(f"{path}: libavcodec's reference frames ({len(refs)}) differ from the slices' "
                            f"nal_ref_idc ({len(nal_refs)}), e.g. pts {sorted(refs ^ nal_refs)[:5]}")
    return order, refs


def _first_slice_is_reference(data: bytes, nal_length: int) -> bool:
    for unit in _nal_units(data, nal_length):
        if 1 <= unit[0] & 0x1F <= 5:
            return bool(unit[0] >> 5)
    return False


def floor_plan(path: str, clips: list[list[int]]) -> FloorPlan:
    """The packets the floor decodes for the sampled frames `clips` (source frame indices)."""
    info = probe_video(path)
    order, refs = scan(path)
    sampled = sorted({i for clip in clips for i in clip})
    needed = {int(info.pts[i]) for i in sampled}
    restarts = set(info.restarts.tolist()) if info.restarts is not None else set()
    gop = np.cumsum([p in restarts for p in order]).tolist()          # GOP number of each packet
    last_needed = {g: k for k, (p, g) in enumerate(zip(order, gop)) if p in needed}
    send = [p for k, (p, g) in enumerate(zip(order, gop))
            if k <= last_needed.get(g, -1) and (p in refs or p in needed)]
    slots = {int(info.pts[i]): n for n, i in enumerate(sampled)}
    counts = {"frames": len(order), "references": len(refs), "gops": len(restarts),
              "gops_sampled": len(last_needed), "sampled": len(sampled),
              "sampled_nonref": len(needed - refs), "references_decoded": sum(p in refs for p in send),
              "decoded": len(send)}
    if not needed <= set(send):
        raise FloorMismatch(f"{path}: sampled pts {sorted(needed - set(send))[:5]} are not among the packets")
    return FloorPlan(frozenset(send), send[-1], slots, [slots[int(info.pts[i])] for i in clips[0]], counts)


def decode_floor(path: str, plan: FloorPlan, size: tuple[int, int], crop: bool) -> tuple[dict, np.ndarray]:
    """Decode `plan`'s packets, convert and resize its sampled frames: (timings and counts, the resized
    frames [sampled, H, W, 3] uint8, one row per distinct sampled frame)."""
    import av

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    sink = _Sink(plan, size, crop)
    with av.open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        for packet in container.demux(stream):
            if packet.pts in plan.send:
                sink.take(ctx.decode(packet))
                if packet.pts == plan.last:
                    break
        sink.take(ctx.decode(None))
    result = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - cpu0, **sink.timers,
              "frames": len(sink.decoded), "resized": sink.resized}
    _check(path, plan, sink.decoded, sink.resized)
    return result, sink.out


class _Sink:
    """The floor's decoded frames: every pts recorded; the sampled ones converted to rgb24 (one swscale
    context) and resized into their row of `out`, the whole frame or its centre crop."""

    def __init__(self, plan: FloorPlan, size: tuple[int, int], crop: bool):
        from av.video.reformatter import VideoReformatter

        h, w = size
        side = min(h, w)
        self.plan, self.shape, self.reformatter = plan, (h, w), VideoReformatter()
        self.window = (*crop_offsets(h, w, side)[0], side, side) if crop else (0, 0, h, w)
        self.out = np.empty((len(plan.slots), self.window[2], self.window[3], 3), np.uint8)
        self.decoded: list[int] = []
        self.resized = 0
        self.timers = {"convert_s": 0.0, "resize_s": 0.0}

    def take(self, frames) -> None:
        for frame in frames:
            self.decoded.append(frame.pts)
            row = self.plan.slots.get(frame.pts)
            if row is not None:
                t0 = time.perf_counter()
                rgb = self.reformatter.reformat(frame, format="rgb24").to_ndarray()
                t1 = time.perf_counter()
                bilinear.resize(rgb, *self.shape, out=self.out[row], window=self.window)
                self.timers["convert_s"] += t1 - t0
                self.timers["resize_s"] += time.perf_counter() - t1
                self.resized += 1


def full_decode_frames(path: str, plan: FloorPlan, size: tuple[int, int]) -> dict[bool, np.ndarray]:
    """The sampled frames from a full decode (every packet given to the decoder), converted and resized as
    the floor does, whole (False) and centre-cropped (True): what the floor's frames must equal."""
    import av

    sinks = {crop: _Sink(plan, size, crop) for crop in (False, True)}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if frame.pts in plan.slots:
                for sink in sinks.values():
                    sink.take([frame])
    return {crop: sink.out for crop, sink in sinks.items()}


def _check(path: str, plan: FloorPlan, decoded: list[int], resized: int) -> None:
    """The decoder returned each planned frame once and nothing else; each sampled frame was resized once."""
    if len(decoded) != len(plan.send) or set(decoded) != plan.send or resized != len(plan.slots):
        raise FloorMismatch(f"{path}: decoded {len(decoded)} frames ({len(set(decoded))} distinct), planned "
                            f"{len(plan.send)}; resized {resized} of {len(plan.slots)} sampled; missing pts "
                            f"{sorted(plan.send - set(decoded))[:5]}, extra {sorted(set(decoded) - plan.send)[:5]}")


def serve() -> None:
    if os.environ.get("BENCH_CPU"):
        os.sched_setaffinity(0, {int(os.environ["BENCH_CPU"])})
    import av

    print(json.dumps({"version": f"PyAV {av.__version__}"}), flush=True)
    plans: dict[str, tuple[FloorPlan, dict[bool, np.ndarray]]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        path, size, crop = req["path"], tuple(req["size"]), bool(req.get("crop"))
        t = time.perf_counter()
        probe_video(path)
        probe_s = time.perf_counter() - t
        if path not in plans:
            plan = floor_plan(path, req["clips"])
            plans[path] = plan, full_decode_frames(path, plan, size)
        plan, expected = plans[path]
        result, out = decode_floor(path, plan, size, crop)
        if not np.array_equal(out, expected[crop]):
            rows = np.flatnonzero((out != expected[crop]).any(axis=(1, 2, 3)))
            raise FloorMismatch(f"{path}: {len(rows)} of {len(out)} sampled frames differ from a full decode's "
                                f"(crop={crop}), e.g. rows {rows[:5].tolist()}")
        checksum = zlib.crc32(np.ascontiguousarray(out[plan.first_clip]).tobytes())
        print(json.dumps({**result, "probe_s": probe_s, "checksum": checksum, "counts": plan.counts}), flush=True)


if __name__ == "__main__":
    serve()
