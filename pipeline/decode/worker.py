"""Decoding in a watchdog worker process (`pipeline.decode.watchdog`), reused across videos: a worker that makes
no progress for `timeout_s` is killed and the video fails with `DecodeError(kind="timeout")`."""
from __future__ import annotations

import logging
from typing import Callable, Iterator

from pipeline.decode import watchdog
from pipeline.config import Config
from pipeline.decode.assembly import Clip
from pipeline.errors import DecodeError

log = logging.getLogger(__name__)


def init() -> None:
    """Run once in each decode worker, before it takes jobs: the imports (no torch: a worker holds
    tens of MB and starts in a fraction of a second), FFmpeg's log level."""
    import av

    import pipeline.decode  # noqa: F401 - everything a job needs, before the worker reports ready

    av.logging.set_level(av.logging.ERROR)


POOL = watchdog.Pool("pipeline.decode.worker:init")


def decode_in_worker(path: str, config: Config, video: str) -> Iterator[Clip]:
    """Stream the clips of `path` from a worker process; kill it when it stalls for `timeout_s`."""
    try:
        yield from POOL.stream("pipeline.decode.worker:job", (path, config, video), config.decode.timeout_s,
                               what="decoding")
    except watchdog.Stalled as exc:
        raise DecodeError(video, "timeout", f"{exc}; decoder killed") from None
    except watchdog.Crashed as exc:
        raise DecodeError(video, "corrupt", f"the decoder crashed (exit status {exc.returncode})") from None


def job(path: str, config: Config, video: str, progress: Callable[[], None]) -> Iterator[Clip]:
    """`decode_local` as a worker job: an unexpected failure still fails only this video, with a reason."""
    from pipeline.decode import decode_local

    try:
        yield from decode_local(path, config, video, progress)
    except DecodeError:
        raise
    except Exception as exc:
        log.exception("%s: unexpected decoder failure", video)
        raise DecodeError(video, "corrupt", f"decoder failed: {type(exc).__name__}: {exc}") from None
