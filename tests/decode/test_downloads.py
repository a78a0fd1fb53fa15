"""Remote videos (issue #20 #3–4): a download that flows is never cut however long it takes, one that stalls
fails within the stall deadline saying so, a spool left by a killed worker is swept, the spool keeps its
reserve, and transient failures are retried by the next run. The server is a loopback http server that
trickles or stalls."""
from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.decode import decode_clips, spool
from pipeline.errors import DecodeError
from pipeline.store.ledger_state import LedgerState, replay

from test_decode import cfg, videos  # noqa: F401 - the fixture


class Trickle(http.server.BaseHTTPRequestHandler):
    """Serves `data` with range support (unless `ranges` is off: then 200 and the whole file); `chunk`
    bytes every `pause` s on each connection, or, with `rate`, `rate` bytes/s for the whole server shared
    by its connections (a slow origin), less `crowding` (a fraction) for each connection past the first;
    stalling for good after `stall_at`. `asked` collects the GETs'
    Range headers, `most` the most GETs in flight at once."""
    data, chunk, pause, stall_at, ranges, rate, crowding = b"", 65536, 0.0, None, True, None, 0.0
    asked: list = []
    most = 0
    lock = threading.Lock()

    def do_HEAD(self):
        if self._missing():
            return
        self._headers(len(self.data), 200)

    def do_GET(self):
        if self._missing():
            return
        start, end = 0, len(self.data) - 1
        self.asked.append(self.headers.get("Range"))
        match = self.ranges and re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, end = int(match.group(1)), min(end, int(match.group(2) or end))
        self._headers(end - start + 1, 206 if match else 200, start, end)
        with Trickle.lock:                                          # counted per server: a stalled
            self.server.busy += 1                                   # handler of an earlier test sleeps on
            Trickle.most, self.left = max(Trickle.most, self.server.busy), False
        try:
            self._send(start, end + 1)
        finally:
            self._leave()

    def _leave(self):
        """No longer in flight: from its last chunk on (the client may ask again as soon as it has it)."""
        with Trickle.lock:
            self.server.busy -= not self.left
            self.left = True

    def _missing(self) -> bool:
        if self.path == "/video.mp4":
            return False
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _headers(self, length, code, start=0, end=0):
        self.send_response(code)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(self.data)}")
        self.end_headers()

    def _send(self, start, stop):
        try:
            for pos in range(start, stop, self.chunk):
                if self.stall_at is not None and pos >= self.stall_at:
                    time.sleep(30)
                    return
                if self.rate:
                    self._queue(min(stop, pos + self.chunk) - pos)
                elif pos > start:
                    time.sleep(self.pause)
                if pos + self.chunk >= stop:
                    self._leave()
                self.wfile.write(self.data[pos:min(stop, pos + self.chunk)])
                self.wfile.flush()
        except OSError:
            pass

    def _queue(self, size):
        """Wait for this chunk's turn on the server's shared `rate` (a token bucket: time lost between
        chunks is made up, up to 20 ms, so that one connection can use the whole rate)."""
        with Trickle.lock:
            turn = max(time.monotonic() - 0.02, self.server.free_at)
            self.server.free_at = turn + size / (self.rate * (1 - self.crowding) ** (self.server.busy - 1))
        time.sleep(max(0.0, turn - time.monotonic()))

    def log_message(self, *args):
        pass


@pytest.fixture
def server(videos):
    Trickle.data = open(videos["pal"], "rb").read()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads, httpd.busy, httpd.free_at = True, 0, 0.0
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()   # shut down in 50 ms
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/video.mp4"
    finally:
        httpd.shutdown()
        Trickle.pause, Trickle.stall_at, Trickle.chunk, Trickle.ranges, Trickle.rate = 0.0, None, 65536, True, None
        Trickle.crowding = 0.0
        Trickle.asked, Trickle.most = [], 0


def test_a_slow_download_that_flows_is_never_cut(server, monkeypatch):
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STALL_S", "1")
    Trickle.chunk = max(4096, len(Trickle.data) // 12)
    Trickle.pause = 0.25                                            # ~3 s in all, every gap under 1 s
    clips = list(decode_clips(server, cfg(timeout_s=0)))
    assert clips and clips[0].frames.shape[0] > 0


def test_a_download_that_stalls_fails_saying_so(server, monkeypatch):
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STALL_S", "1")
    Trickle.chunk, Trickle.stall_at = 512, len(Trickle.data) // 2
    with pytest.raises(DecodeError) as err:
        list(decode_clips(server, cfg(timeout_s=0)))
    assert err.value.kind == "io" and "stalled" in err.value.reason, err.value
    assert not os.listdir(spool.spool_root()) or all(not n.startswith(f"{os.getpid()}-")
                                                     for n in os.listdir(spool.spool_root()))


def test_the_spool_of_a_dead_process_is_swept_and_a_live_one_kept(monkeypatch, tmp_path):
    monkeypatch.setattr(spool.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid in (int(dead.stdout), os.getpid()):
        os.makedirs(os.path.join(spool.spool_root(), f"{pid}-abcd"))
        open(os.path.join(spool.spool_root(), f"{pid}-abcd", "video.mp4"), "wb").close()
    monkeypatch.setattr(spool, "_swept", False)
    spool.sweep()
    assert os.listdir(spool.spool_root()) == [f"{os.getpid()}-abcd"]


def test_the_spool_keeps_its_reserve(server, monkeypatch):
    monkeypatch.setenv("VIDFEAT_SPOOL_RESERVE_MB", str(10 ** 9))
    with pytest.raises(DecodeError) as err:
        list(decode_clips(server, cfg(timeout_s=0)))
    assert err.value.kind == "io" and "no room to spool" in err.value.reason


def test_transient_failures_are_retried_by_the_next_run_and_permanent_ones_are_not():
    failed = [{"video_id": v, "uri": f"/{v}", "stage": stage, "error": error} for v, stage, error in [
        ("io", "decode", "io: download stalled: no byte for 60 s"), ("slow", "decode", "timeout: no progress"),
        ("lost", "decode", "incomplete: the pipeline returned no final clip"), ("oom", "infer", "inference: OOM"),
        ("gone", "decode", "not_found: no such file"), ("junk", "decode", "not_a_video: text")]]
    state = replay(LedgerState(), [{"part": "p", "committed_at": 1.0, "done": ["ok"], "failed": failed}])
    ids = pa.array(["ok", "io", "slow", "lost", "oom", "gone", "junk", "new"])
    assert ids.filter(state.todo_mask(ids)).to_pylist() == ["io", "slow", "lost", "oom", "new"]
    assert ids.filter(state.todo_mask(ids, retry_transient=False)).to_pylist() == ["new"]
    assert ids.filter(state.todo_mask(ids, retry_failed=True)).to_pylist() == [
        "io", "slow", "lost", "oom", "gone", "junk", "new"]


def test_a_missing_url_is_not_found_and_a_refused_one_is_io(server):
    with pytest.raises(DecodeError) as err:
        list(decode_clips(server.replace("video.mp4", "missing.mp4"), cfg(timeout_s=0)))
    assert err.value.kind == "not_found"
    from conftest import free_port

    with pytest.raises(DecodeError) as err:
        list(decode_clips(f"http://127.0.0.1:{free_port()}/video.mp4", cfg(timeout_s=0)))
    assert err.value.kind == "io" and "cannot reach" in err.value.reason


# --- concurrent ranged reads (issue #18 #2): the download a prefetch cannot hide, several times sooner ----

def spool_bytes(uri: str) -> bytes:
    from pipeline.decode.source import local_copy

    with local_copy(uri, "v") as path:
        return open(path, "rb").read()


@pytest.fixture
def small_ranges(monkeypatch):
    """Ranges of 512 bytes, 4 at a time, so that a test video is many ranges and several windows."""
    from pipeline.decode import ranged

    monkeypatch.setattr(ranged, "RANGE", 512)
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STREAMS", "4")
    assert len(Trickle.data) > 2 * 4 * 512, "the test video must span several windows"


def test_a_remote_video_arrives_as_concurrent_ranges_byte_for_byte(server, small_ranges):
    Trickle.chunk, Trickle.pause = 128, 0.01                       # each range takes a while: they overlap
    assert spool_bytes(server) == Trickle.data
    ranges = [r for r in Trickle.asked if r]
    assert len(ranges) == -(-len(Trickle.data) // 512) and len(ranges) == len(Trickle.asked)
    assert Trickle.most > 1                                         # several streams at once, at most 4
    assert Trickle.most <= 4


def test_a_store_that_ignores_ranges_is_read_as_one_stream(server, small_ranges):
    Trickle.ranges = False                                          # 200 and the whole file for any range
    assert spool_bytes(server) == Trickle.data
    assert Trickle.asked[-1] is None or Trickle.asked[-1].startswith("bytes=0-")


def test_one_stream_when_told_and_a_stalled_range_fails_saying_so(server, small_ranges, monkeypatch):
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STREAMS", "1")
    assert spool_bytes(server) == Trickle.data
    assert len(Trickle.asked) == 1                                  # one stream: one GET
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STREAMS", "4")
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STALL_S", "1")
    Trickle.chunk, Trickle.stall_at = 512, len(Trickle.data) // 2
    with pytest.raises(DecodeError) as err:
        spool_bytes(server)
    assert err.value.kind == "io" and "download stalled: no byte for 1 s after 0.0 of 0.0 MiB" in err.value.reason
    assert own_spools() == []


def test_a_video_on_s3_arrives_as_ranges_and_a_missing_one_is_not_found(s3, small_ranges, videos):
    data = open(videos["pal"], "rb").read()
    s3["fs"].pipe(f"{s3['bucket']}/ranged/pal.mp4", data)
    assert spool_bytes(f"s3://{s3['bucket']}/ranged/pal.mp4") == data
    with pytest.raises(DecodeError) as err:
        spool_bytes(f"s3://{s3['bucket']}/ranged/missing.mp4")
    assert err.value.kind == "not_found"
    assert own_spools() == []


# --- prefetching (issue #18 #2): the next remote video of a task spools while the current one decodes ------

def memory_videos(videos, names) -> list[tuple[str, str]]:
    """The named test videos put on fsspec's in-memory file system (remote: spooled, not opened in place)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    items = []
    for name in names:
        if name in videos:
            fs.pipe_file(f"/prefetch/{name}.mp4", open(videos[name], "rb").read())
        items.append((f"memory://prefetch/{name}.mp4", name))
    return items


def own_spools() -> list[str]:
    root = spool.spool_root()
    return [n for n in os.listdir(root) if n.startswith(f"{os.getpid()}-")] if os.path.isdir(root) else []


def test_the_next_video_downloads_while_this_one_is_used_and_at_most_two_are_spooled(videos):
    from pipeline.decode.prefetch import Prefetcher

    items = memory_videos(videos, ["pal", "ntsc", "film"])
    seen = []
    with Prefetcher(items) as prefetch:
        for uri, name in items:
            with prefetch.local(uri, name) as path:
                assert open(path, "rb").read() == open(videos[name], "rb").read()
                deadline = time.monotonic() + 30
                while len(own_spools()) < min(2, len(items) - len(seen)) and time.monotonic() < deadline:
                    time.sleep(0.01)                       # the next one arrives in the background
                seen.append(len(own_spools()))
            assert not os.path.exists(path)                # removed as soon as its video is done
    assert seen == [2, 2, 1] and own_spools() == []


def test_a_prefetched_failure_keeps_its_kind_and_fails_only_its_own_video(videos):
    from pipeline.decode.prefetch import Prefetcher

    items = memory_videos(videos, ["pal", "gone", "film"]) + [("notaprotocol://x/y.mp4", "bad-url")]
    outcomes = []
    with Prefetcher(items) as prefetch:
        for uri, name in items:
            try:
                with prefetch.local(uri, name) as path:
                    outcomes.append((name, os.path.getsize(path) > 0))
            except DecodeError as exc:
                outcomes.append((name, exc.kind))
    assert outcomes == [("pal", True), ("gone", "not_found"), ("film", True), ("bad-url", "io")]
    assert own_spools() == []


def test_closing_a_task_mid_way_stops_and_removes_what_was_prefetched(videos):
    from pipeline.decode.prefetch import Prefetcher

    items = memory_videos(videos, ["pal", "ntsc", "film"])
    prefetch = Prefetcher(items)
    with prefetch.local(*items[0]):
        deadline = time.monotonic() + 30
        while len(own_spools()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(own_spools()) == 2
    prefetch.close()                                       # the task ends (or its generator is closed)
    assert own_spools() == []


def test_the_decode_stage_gives_the_same_clips_from_remote_and_local_videos(videos):
    from pipeline.config import Config
    from pipeline.run.decode_stage import decode_videos

    items = memory_videos(videos, ["pal", "film", "cfr30"])
    config = Config.from_preset("tiny").replace(decode={"timeout_s": 0}).to_dict()

    def rows(uris):
        batch = {"row": np.arange(len(items)), "video_id": np.array([n for _, n in items], dtype=object),
                 "uri": np.array(uris, dtype=object)}
        return [(str(b["video_id"][0]), b["error"][0], b["frames"][0].tobytes()) for b in decode_videos(batch, config)]

    remote, local = rows([u for u, _ in items]), rows([videos[n] for _, n in items])
    assert remote == local and all(not err for _, err, _ in remote) and len(remote) >= 3
    assert own_spools() == []


# --- downloads judged by progress (issue #27 #2): slow and steady is never cut, on any path ---------------

PATHS = ["ranges", "one stream", "prefetcher"]


@pytest.fixture
def trickled(server, monkeypatch):
    """250 kB served at 100 kB/s for the whole server, 10 kB at a time; a stall deadline of 1 s."""
    Trickle.data, Trickle.chunk, Trickle.rate = os.urandom(250_000), 10_000, 100_000
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STALL_S", "1")
    return server


def fetch(uri: str, how: str, monkeypatch) -> bytes:
    """The bytes of `uri` as spooled `how`: concurrent ranges (32 KiB, 4 at most), one stream, or
    through a Prefetcher (ranges)."""
    from pipeline.decode import ranged
    from pipeline.decode.prefetch import Prefetcher

    monkeypatch.setattr(ranged, "RANGE", 32768)
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STREAMS", "1" if how == "one stream" else "4")
    if how != "prefetcher":
        return spool_bytes(uri)
    with Prefetcher([(uri, "v")]) as prefetch, prefetch.local(uri, "v") as path:
        return open(path, "rb").read()


@pytest.mark.parametrize("how", PATHS)
def test_a_slow_steady_download_arrives_whole_on_every_path(trickled, monkeypatch, how):
    began = time.monotonic()
    assert fetch(trickled, how, monkeypatch) == Trickle.data
    assert time.monotonic() - began > 2                            # it trickled: twice the stall deadline
    ranges = [r for r in Trickle.asked if r]
    assert len(ranges) > 1 if how != "one stream" else Trickle.asked == [None]
    assert own_spools() == []


@pytest.mark.parametrize("how", PATHS)
def test_a_download_that_stops_mid_way_fails_saying_how_far_it_got(trickled, monkeypatch, how):
    Trickle.rate, Trickle.stall_at = 1_000_000, 150_000            # 0.15 s of bytes, then none
    began = time.monotonic()
    with pytest.raises(DecodeError) as err:
        fetch(trickled, how, monkeypatch)
    assert err.value.kind == "io" and "download stalled: no byte for 1 s after 0.1 of 0.2 MiB" in err.value.reason
    assert time.monotonic() - began < 4                            # the deadline, plus a watchdog tick
    assert own_spools() == []


def test_a_download_stops_within_a_tick_when_its_task_ends(trickled, tmp_path):
    from pipeline.decode.source import resolve

    fs, path = resolve(trickled, "v")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    with pytest.raises(DecodeError) as err:
        spool.download(fs, path, str(tmp_path / "v.mp4"), "v", stop)
    assert err.value.kind == "io" and "cancelled" in err.value.reason
    assert time.monotonic() - began < 1.5                          # 2.5 s of bytes were still to come


# --- how many ranges at once (issue #27 #2): only as many as make the host faster -------------------------

class Rounds:
    """A Width (most 8) on a fake clock: `rounds(*rates)` ends a round (`now` ranges, 2 at least, every
    stream busy) in 1 s at each rate in bytes/s, and gives the widths after each."""

    def __init__(self, pace=None):
        from pipeline.decode.ranged import Pace, Progress, Width

        self.now, self.pace = 0.0, pace or Pace()
        self.progress = Progress(None, clock=lambda: self.now)
        self.width = Width(self.pace, 8, self.progress, clock=lambda: self.now)

    def __call__(self, *rates) -> list[int]:
        out = []
        for rate in rates:
            self.now += 1
            self.progress.add(rate)
            self.width.ended(max(2, self.width.now), busy=self.width.now, more=True)
            out.append(self.width.now)
        return out


def test_ranges_widen_while_each_doubling_is_faster():
    rounds = Rounds()                                              # a server capped per connection
    assert rounds(100, 200, 400, 800, 900) == [2, 4, 8, 8, 8] and rounds.pace.width == 8


def test_ranges_go_back_to_the_best_width_when_wider_is_not_faster():
    capped = Rounds()                                              # capped for the whole server
    assert capped(100, 110, 500) == [2, 1, 1] and capped.pace.width == 1
    assert Rounds(capped.pace).width.now == 1                      # the host's next video starts at one
    losing = Rounds()                                              # slower with each connection
    assert losing(100, 200, 180) == [2, 4, 2] and losing.pace.width == 2


def test_a_width_is_known_only_once_a_round_at_it_has_ended():
    rounds = Rounds()
    assert rounds(100) == [2] and rounds.pace.width == 1          # 2 is tried, not yet known better
    rounds.now += 1
    rounds.progress.add(300)
    rounds.width.ended(1, busy=2, more=False)                      # none waits: the round ends sooner
    assert rounds.pace.width == 2 and rounds.width.now == 4
    rounds.width.ended(1, busy=1, more=False)                      # a stream idle: no round
    assert rounds.pace.width == 2 and not rounds.width.settled


@pytest.mark.parametrize("server_kind, widest", [("slower with each connection", 1), ("capped per connection", 4)])
def test_a_host_gets_as_many_streams_as_make_it_faster(server, monkeypatch, server_kind, widest):
    from pipeline.decode import ranged
    from pipeline.decode.source import resolve

    Trickle.data, Trickle.chunk = os.urandom(16 * 32768), 8192    # rounds at 1, 2 and 4 end with ranges to go
    if server_kind == "slower with each connection":
        Trickle.rate, Trickle.crowding = 800_000, 0.5              # 800 kB/s for one GET, 400 for two, ...
    else:
        Trickle.pause = 0.04                                       # 200 kB/s a GET
    monkeypatch.setattr(ranged, "RANGE", 32768)                    # 16 ranges of 4 chunks
    monkeypatch.setenv("VIDFEAT_DOWNLOAD_STREAMS", "4")
    assert spool_bytes(server) == Trickle.data
    assert ranged.pace(*resolve(server, "v")).width == widest      # the best width measured
    assert Trickle.most >= 2                                       # one stream, then two to compare, ...
