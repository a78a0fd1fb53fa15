"""The console (pipeline.cli.console): the progress line, and where Ray's log records and C++ lines go.
No Ray cluster here (the routing test imports ray in a subprocess); the whole demo is test_demo.py. The
progress line reads a clock the test moves; its periodic output is waited for, never slept for."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from pipeline.cli.console import print_summary
from pipeline.cli.progress import Progress, _clock

from conftest import ray_env, wait_for


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_counts_videos_clips_failures_rate_and_eta():
    clock = Clock()
    progress = Progress(4, enabled=False, clock=clock)
    for _ in range(3):
        progress.clip_done({"error": ""})
    progress.clip_done({"error": "not_a_video: ..."})        # a failure row is not a clip
    progress.video_done({"video": {"duration_s": 180.0}})
    progress.video_done({"failure": {"video_id": "x"}})
    clock.now += 100                                         # 180 s of video in 100 s: 1.80 video-h/h
    line = progress.line()
    assert line == "videos 2/4 (1 failed) | clips 3 | 1.80 video-h/h | elapsed 1:40 | ETA 1:40", line
    clock.now += 3500                                        # 2 of 4 videos in 3600 s: as long again
    assert progress.line().endswith("| 0.05 video-h/h | elapsed 1:00:00 | ETA 1:00:00"), progress.line()
    assert _clock(3725) == "1:02:05" and _clock(59.6) == "1:00"


def test_non_interactive_output_gets_whole_lines_periodically():
    out = io.StringIO()
    progress = Progress(2, stream=out, interval_s=0.01)
    progress.video_done({"video": {"duration_s": 1.0}})
    periodic = lambda: out.getvalue().count("videos 1/2 | clips 0")           # noqa: E731
    assert wait_for(lambda: periodic() >= 2, timeout=60, interval=0.01), out.getvalue()   # before close()
    progress.close()
    lines = out.getvalue().splitlines(keepends=True)
    assert "\r" not in out.getvalue() and all(line.endswith("\n") for line in lines)
    assert all(line.startswith(("videos 0/2 | clips 0", "videos 1/2 | clips 0")) for line in lines), lines
    assert lines[-1].startswith("videos 1/2 | clips 0")                     # and the last, drawn by close()


def test_terminal_gets_one_line_redrawn_in_place():
    out = Terminal()
    progress = Progress(1, stream=out, interval_s=0.01)
    assert wait_for(lambda: out.getvalue().count("\r") >= 2, timeout=60, interval=0.01), out.getvalue()
    progress.video_done({"video": {"duration_s": 1.0}})
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") >= 3
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("videos 1/1")


def test_summary_lines():
    out = io.StringIO()
    summary = {"ok": 3, "failed": 1, "skipped": 2, "total": 6, "clips": 9, "video_hours": 0.5, "wall_s": 60.0,
               "video_s_per_s": 30.0, "decode_s": 1.0, "infer_s": 2.0, "commit_s": 0.1, "devices": ["cuda:0"],
               "failures": [{"video_id": "b.mp4", "stage": "decode", "error": "corrupt: x"}]}
    print_summary(summary, "random", out="s3://b/o", stream=out)
    text = out.getvalue()
    assert "random model weights" in text and "videos: 3 ok, 1 failed, 2 skipped (of 6)" in text
    assert "failed: b.mp4 [decode] corrupt: x" in text and "HTML report: vidfeat report s3://b/o" in text
    assert "more" not in text


def test_summary_says_how_many_failures_it_does_not_show():
    out = io.StringIO()
    failures = [{"video_id": f"v{i}", "stage": "decode", "error": "not_found: x"} for i in range(100)]
    summary = {"ok": 0, "failed": 20000, "skipped": 0, "total": 20000, "clips": 0, "video_hours": 0.0,
               "wall_s": 60.0, "video_s_per_s": 0.0, "decode_s": 0.0, "infer_s": 0.0, "commit_s": 0.1,
               "devices": [], "failures": failures}
    print_summary(summary, out="/data/out", stream=out)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("  failed: ") for line in lines) == 20
    assert "  ... and 19980 more: `vidfeat status /data/out --json` lists every failure" in out.getvalue()


ROUTING = textwrap.dedent("""
    import logging, os, sys
    from pipeline.cli import console
    console.configure_logging(verbose={verbose})
    with console.ray_logs_to_file(sys.argv[1], verbose={verbose}):
        logging.getLogger("ray").warning("RAY-PYTHON-LINE")
        logging.getLogger("ray.data._internal.progress").info("RAY-DATA-LINE")
        os.write(2, b"NATIVE-STDERR-LINE\\n")               # as the C++ core worker writes
        logging.getLogger("pipeline.store.ledger").warning("OUR-WARNING")
        logging.getLogger("pipeline.run.runner").info("OUR-INFO")
        print("OUR-STDERR-LINE", file=sys.stderr)
        import ray, warnings
        warnings.warn_explicit("RAY-PY-WARNING", UserWarning, os.path.join(os.path.dirname(ray.__file__), "x.py"), 1)
        warnings.warn("OUR-PY-WARNING")
    os.write(2, b"AFTER-THE-BLOCK\\n")
    logging.getLogger("ray").warning("RAY-AFTER")
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_records_and_native_stderr_go_to_the_log_file(tmp_path, verbose):
    log = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-c", ROUTING.format(verbose=verbose), str(log)], env=ray_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = log.read_text()
    for line in ("RAY-PYTHON-LINE", "RAY-DATA-LINE", "RAY-PY-WARNING", "OUR-WARNING", "OUR-INFO"):
        assert line in written, (line, written)
    assert ("NATIVE-STDERR-LINE" in written) != verbose
    verbose_only = {"RAY-PYTHON-LINE", "RAY-DATA-LINE", "RAY-PY-WARNING", "NATIVE-STDERR-LINE", "OUR-INFO"}
    assert {line for line in verbose_only if line in done.stderr} == (verbose_only if verbose else set())
    for line in ("OUR-WARNING", "OUR-STDERR-LINE", "OUR-PY-WARNING", "AFTER-THE-BLOCK", "RAY-AFTER"):
        assert line in done.stderr, (line, done.stderr)
