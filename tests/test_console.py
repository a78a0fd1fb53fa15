"""The console (pipeline.console): the progress line, and where Ray's log records and C++ lines go.
No Ray cluster here (the routing test imports ray in a subprocess); the whole demo is test_demo.py."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.console import Progress, _clock, print_summary

from conftest import ray_env


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_counts_videos_clips_failures_rate_and_eta():
    progress = Progress(4, enabled=False)
    progress.started -= 100                                  # as if the run began 100 s ago
    for _ in range(3):
        progress.clip_done({"error": ""})
    progress.clip_done({"error": "not_a_video: ..."})        # a failure row is not a clip
    progress.video_done({"video": {"duration_s": 180.0}})
    progress.video_done({"failure": {"video_id": "x"}})
    line = progress.line()
    assert line.startswith("videos 2/4 (1 failed) | clips 3 | 1.80 video-h/h | elapsed 1:40 | ETA 1:40"), line
    assert _clock(3725) == "1:02:05" and _clock(59.6) == "1:00"


def test_non_interactive_output_gets_whole_lines_periodically():
    out = io.StringIO()
    progress = Progress(2, stream=out, interval_s=0.05)
    progress.video_done({"video": {"duration_s": 1.0}})
    time.sleep(0.3)
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) >= 2
    assert all(line.startswith("videos 1/2 | clips 0") for line in lines)


def test_terminal_gets_one_line_redrawn_in_place():
    out = Terminal()
    progress = Progress(1, stream=out, interval_s=0.05)
    time.sleep(0.2)
    progress.video_done({"video": {"duration_s": 1.0}})
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") >= 2
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
    from pipeline import console
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
