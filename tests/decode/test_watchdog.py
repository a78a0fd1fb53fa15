"""The worker-process watchdog: items (large arrays through shared memory), errors, stalls, crashes and
early closing. The targets below run in the worker, which imports this module by name."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipeline.decode import transport, watchdog

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = "test_watchdog:{}"


def frames(count: int, shape: tuple[int, ...], progress):
    """`count` items, each a dict holding a large uint8 array whose pixels encode its index, a small
    array and plain values."""
    for i in range(count):
        progress()
        big = np.full(shape, i % 251, dtype=np.uint8)
        big[0, 0] = np.arange(shape[-1]) % 256
        yield {"index": i, "frames": big, "small": np.arange(5) * i, "strided": np.arange(20)[::2]}


def frames_without_shared_memory(count: int, shape: tuple[int, ...], progress):
    """`frames`, in a worker where creating shared memory fails."""
    def refuse(*args):
        raise OSError(38, "Function not implemented")

    os.memfd_create = refuse
    yield from frames(count, shape, progress)


def fail(kind: str, progress):
    progress()
    if kind == "value":
        raise ValueError("bad input 42")
    raise UnpicklableError(lambda: None)
    yield  # pragma: no cover  (a generator)


class UnpicklableError(Exception):
    def __init__(self, fn):
        super().__init__("cannot pickle me")
        self.fn = fn


def hang(progress):
    yield "first"
    time.sleep(3600)
    yield "never"


def crash(progress):
    yield "first"
    os._exit(7)


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE)        # the worker imports this module as `test_watchdog`
    pool = watchdog.Pool()
    yield pool
    pool.shutdown()


def test_items_arrive_whole_and_large_arrays_through_shared_memory(pool):
    shape = (12, 64, 96, 3)                          # 221 KB: under the shared-memory threshold …
    big_shape = (40, 120, 160, 3)                    # 2.3 MB: over it
    small = list(pool.stream(TARGET.format("frames"), (3, shape), timeout_s=60))
    large = list(pool.stream(TARGET.format("frames"), (3, big_shape), timeout_s=60))
    for items, want in ((small, shape), (large, big_shape)):
        assert [item["index"] for item in items] == [0, 1, 2]
        for i, item in enumerate(items):
            expected = np.full(want, i % 251, dtype=np.uint8)
            expected[0, 0] = np.arange(want[-1]) % 256
            assert item["frames"].shape == want and np.array_equal(item["frames"], expected)
            assert np.array_equal(item["small"], np.arange(5) * i)
            assert np.array_equal(item["strided"], np.arange(20)[::2])
    if transport.MEMFD:
        arr = large[0]["frames"]
        assert _backed_by_mmap(arr) and not _backed_by_mmap(small[0]["frames"])
        arr[1, 1, 1, 0] = 255                        # the caller owns its copy: writable, private to it
        assert arr[1, 1, 1, 0] == 255 and large[1]["frames"][1, 1, 1, 0] == 1
    assert len(pool.idle) == 1                       # one worker, reused for both jobs


def test_without_shared_memory_items_travel_through_the_socket(pool):
    shape = (40, 120, 160, 3)
    items = list(pool.stream(TARGET.format("frames_without_shared_memory"), (2, shape), timeout_s=60))
    assert [item["index"] for item in items] == [0, 1]
    assert items[1]["frames"].shape == shape and items[1]["frames"][1, 1, 1, 0] == 1
    assert not _backed_by_mmap(items[0]["frames"])


def _backed_by_mmap(arr: np.ndarray) -> bool:
    import mmap

    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        nxt = getattr(base, "base", None)
        base = nxt if nxt is not None else getattr(base, "obj", None)
    return isinstance(base, mmap.mmap)


def test_errors_of_the_target_are_raised_in_the_caller_and_the_worker_stays(pool):
    with pytest.raises(ValueError, match="bad input 42"):
        list(pool.stream(TARGET.format("fail"), ("value",), timeout_s=60))
    with pytest.raises(RuntimeError, match="UnpicklableError: cannot pickle me"):
        list(pool.stream(TARGET.format("fail"), ("unpicklable",), timeout_s=60))
    (pid,) = pool.pids()
    assert len(list(pool.stream(TARGET.format("frames"), (2, (4, 4, 3)), timeout_s=60))) == 2
    assert pool.pids() == [pid]


def test_a_stalled_worker_is_killed(pool):
    items = pool.stream(TARGET.format("hang"), (), timeout_s=1.5, what="hanging")
    assert next(items) == "first"
    with pytest.raises(watchdog.Stalled, match="hanging made no progress for 1.5 s"):
        next(items)
    assert pool.pids() == []                          # killed, not returned to the pool
    assert len(list(pool.stream(TARGET.format("frames"), (1, (4, 4, 3)), timeout_s=60))) == 1


def test_a_crashed_worker_is_reported_with_its_exit_status(pool):
    with pytest.raises(watchdog.Crashed) as err:
        list(pool.stream(TARGET.format("crash"), (), timeout_s=60))
    assert err.value.returncode == 7
    assert len(list(pool.stream(TARGET.format("frames"), (1, (4, 4, 3)), timeout_s=60))) == 1


def test_a_worker_that_dies_while_the_caller_holds_an_item_is_reported_as_crashed(pool):
    """The caller's next request then meets a closed socket: Crashed, not a BrokenPipeError."""
    items = pool.stream(TARGET.format("crash"), (), timeout_s=60)
    assert next(items) == "first"
    time.sleep(0.5)                                   # the worker has exited by now
    with pytest.raises(watchdog.Crashed) as err:
        next(items)
    assert err.value.returncode == 7


def test_closing_early_with_items_in_flight_keeps_the_worker_usable(pool):
    items = pool.stream(TARGET.format("frames"), (50, (40, 120, 160, 3)), timeout_s=60)
    assert next(items)["index"] == 0
    time.sleep(0.5)                                   # let the worker put its prefetched items on the wire
    items.close()
    (pid,) = pool.pids()                              # it acknowledged the stop and went back to the pool
    again = list(pool.stream(TARGET.format("frames"), (2, (40, 120, 160, 3)), timeout_s=60))
    assert [item["index"] for item in again] == [0, 1] and pool.pids() == [pid]

