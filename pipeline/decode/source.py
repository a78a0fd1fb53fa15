"""Where a video's bytes come from: a local path for any fsspec URL (remote files are spooled to a
temporary file), and opening it with PyAV with every failure turned into a `DecodeError` of the right kind
(not found, permission denied, not a video, a still image, corrupt, unsupported codec, I/O)."""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterator

from pipeline.decode.spool import http_options, spooled
from pipeline.errors import DecodeError

_IMAGE_FORMATS = ("image2", "apng", "webp_pipe")      # plus every "*_pipe" demuxer (png_pipe, jpeg_pipe, ...)
_CONTAINER_MAGIC = (b"ftyp", b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"G")


@contextlib.contextmanager
def local_copy(uri: str, video: str | None = None) -> Iterator[str]:
    """A local path for `uri`: local paths and file:// as they are; any other fsspec URL is spooled to a
    local file (spool.py: stall deadline, bounded spool) that is removed on exit (also on error or when
    a generator using it is closed)."""
    video = video or uri
    fs, path = resolve(uri, video)
    if fs is None:
        yield path
        return
    with spooled(fs, path, video) as local:
        yield local


def resolve(uri: str, video: str):
    """(fs, path) of a remote `uri`, (None, path) of a local one; DecodeError ("io") for a bad URL."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(uri, **http_options(uri))
    except (ValueError, ImportError) as exc:
        raise DecodeError(video, "io", f"cannot open {uri!r}: {exc}") from exc
    return (None, path) if isinstance(fs, LocalFileSystem) else (fs, path)


def open_video(path: str, video: str):
    """av.open with every failure turned into a DecodeError of the right kind."""
    import av

    _check_file(path, video)
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FileNotFoundError as exc:
        raise DecodeError(video, "not_found", f"no such file: {path}") from exc
    except av.error.PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"cannot read {path}") from exc
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        raise _unreadable(path, video, exc) from exc
    except av.error.FFmpegError as exc:
        raise DecodeError(video, "corrupt", f"cannot open container: {exc}") from exc
    except OSError as exc:
        raise DecodeError(video, "io", f"cannot read {path}: {exc}") from exc
    try:
        _check_is_video(container, video)
    except BaseException:
        container.close()
        raise
    return container


def _check_file(path: str, video: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DecodeError(video, "not_found", f"no such file: {path}") from exc
    except PermissionError as exc:
        raise DecodeError(video, "permission_denied", f"cannot access {path}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError(video, "not_a_video", f"{path} is a directory")
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            raise DecodeError(video, "not_a_video", "file is empty (0 bytes)")
        if not os.access(path, os.R_OK):
            raise DecodeError(video, "permission_denied", f"no read permission on {path}")


def _unreadable(path: str, video: str, exc: Exception) -> DecodeError:
    """A file FFmpeg cannot open: damaged if it starts like a known container, otherwise not a video."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        head = b""
    if any(m in head[:8] for m in _CONTAINER_MAGIC if len(m) > 1):
        return DecodeError(video, "corrupt", f"damaged or truncated container ({exc})")
    return DecodeError(video, "not_a_video", f"not a recognised video container ({exc})")


def _check_is_video(container, video: str) -> None:
    fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in _IMAGE_FORMATS:
        raise DecodeError(video, "not_a_video", f"is a still image ({fmt}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise DecodeError(video, "not_a_video", f"has no video stream (found: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise DecodeError(video, "unsupported_codec",
                          f"no decoder for its video codec (codec tag {_codec_tag(stream)!r})")


def _codec_tag(stream) -> str:
    """The stream's codec tag / name as the container states it, for error messages."""
    for attr in ("codec_tag", "name"):
        try:
            value = getattr(stream, attr, None) or getattr(stream.codec, attr, None)
        except Exception:                                          # noqa: BLE001 - best effort
            value = None
        if value:
            return str(value)
    return "unknown"


def raise_if_io(exc: Exception, video: str) -> None:
    """Re-raise a read failure of the storage (not of the data) as DecodeError(kind="io")."""
    import av

    damaged = isinstance(exc, (av.error.InvalidDataError, av.error.EOFError, av.error.UndefinedError))
    if isinstance(exc, OSError) and not damaged:
        raise DecodeError(video, "io", f"read error: {exc}") from exc
