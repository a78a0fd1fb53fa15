"""Live metrics (issue #21): a run exports its counters and gauges through Ray's metrics API; an embedded
run serves them on 127.0.0.1:--metrics-port while it runs, and its last values equal the run summary.
The run reads its videos through a gate (gate.py), so its mid-run scrape cannot come after its end."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pipeline.synthetic.samples import write_index_video
from pipeline.run import metrics as run_metrics
from pipeline.run.queue import rows_waiting

from conftest import free_port, ray_env
from gate import HELD_S, Gate, until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUMMARY_OF = {"ray_vidfeat_videos_done": "ok", "ray_vidfeat_videos_failed": "failed",
              "ray_vidfeat_clips": "clips", "ray_vidfeat_decode_seconds": "decode_s",
              "ray_vidfeat_infer_seconds": "infer_s", "ray_vidfeat_bytes_written": "bytes_written"}


def start_run(tmp_path, gate: Gate, n: int, port: int) -> subprocess.Popen:
    """`vidfeat extract` of `n` videos read through `gate` and one broken local file, serving its metrics
    on `port` and holding the final values until a SIGTERM (its log in tmp_path/logs)."""
    rows = [f"v{i}.mp4,{gate.uri(f'v{i}.mp4')}" for i in range(n)] + [f"broken.mp4,{tmp_path / 'broken.mp4'}"]
    (tmp_path / "videos.csv").write_text("video_id,uri\n" + "\n".join(rows) + "\n")
    (tmp_path / "run.yaml").write_text(      # one commit, at the end: only the final update carries its bytes
        "run:\n  commit_every: 1000\n  metrics_linger_s: 3600\n  num_decoders: 1\n"
        "  videos_per_task: 1\n  batch_size: 1\n")                  # a result block: clips of one video
    args = ["extract", str(tmp_path / "videos.csv"), "--out", str(tmp_path / "out"), "--preset", "tiny",
            "--checkpoint", "random", "--config", str(tmp_path / "run.yaml"), "--no-progress",
            "--metrics-port", str(port)]
    env = {**ray_env(), "VIDFEAT_DOWNLOAD_STALL_S": HELD_S, "VIDFEAT_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def scraped(port: int, seen: list[dict], wanted) -> bool:
    """Whether a scrape of 127.0.0.1:`port` now is `wanted` (one that shows vidfeat series goes to `seen`)."""
    try:
        got = run_metrics.scrape(port, timeout_s=5)
    except OSError:
        return False
    seen.extend([got] if got else [])
    return bool(got) and bool(wanted(got))


def holding_final_values(logs) -> bool:
    """Whether the run's log says that the endpoint serves its final values (metrics.hold_final)."""
    return any("the run's final metrics are served" in open(p).read() for p in glob.glob(str(logs / "*.log")))


def watch_run(tmp_path, videos, n: int, port: int) -> SimpleNamespace:
    """Run `n` videos behind a gate, scrape the run mid-way (a video done, rows waiting read from the
    executor), open the gate, scrape the final values it holds, end the hold with a SIGTERM. Two videos
    pass the gate: the run cannot end, and one of them completes although Ray Data's iterator hands the
    driver a result block only once the next one exists."""
    seen: list[dict] = []
    with Gate(str(videos), admit=2) as gate:
        proc = start_run(tmp_path, gate, n, port)
        try:
            until(lambda: scraped(port, seen, lambda s: s.get("ray_vidfeat_videos_done") and
                                  "ray_vidfeat_rows_waiting" in s), proc)
            mid = seen[-1]
            gate.open()
            until(lambda: holding_final_values(tmp_path / "logs"), proc)
            text = run_metrics.scrape_text(port)                  # the final values, held until the SIGTERM
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
    return SimpleNamespace(mid=mid, seen=[*seen, run_metrics.parse(text)], text=text, code=proc.returncode,
                           stderr=stderr)


def test_a_run_serves_its_metrics_while_it_runs_and_they_end_equal_to_its_summary(tmp_path):
    videos, port, n = tmp_path / "videos", free_port(), 3
    videos.mkdir()
    for i in range(n):
        write_index_video(str(videos / f"v{i}.mp4"), num_frames=40 + 12 * i)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    watched = watch_run(tmp_path, videos, n, port)
    # the SIGTERM that ends the hold is a scheduler's stop like any other (issue #30): the phases after it
    # (fold, compaction) honour it, the run is recorded as interrupted, and its exit says so
    assert watched.code == 143, watched.stderr
    (run,) = [json.load(open(p))["summary"] for p in glob.glob(str(tmp_path / "out" / "runs" / "*.json"))]
    assert run["ok"] == n and run["failed"] == 1 and run["bytes_written"] > 0 and run["interrupted"] == "SIGTERM"
    assert 0 < watched.mid["ray_vidfeat_videos_done"] < n               # scraped mid-run, counting up
    done = [s.get("ray_vidfeat_videos_done", 0) for s in watched.seen]
    assert done == sorted(done), done
    last = watched.seen[-1]
    for name, field in SUMMARY_OF.items():
        assert last.get(name) == pytest.approx(run[field], rel=1e-6), name
    assert last["ray_vidfeat_video_seconds"] == pytest.approx(run["video_hours"] * 3600, rel=1e-6)
    assert last["ray_vidfeat_rows_waiting"] == 0 and last["ray_vidfeat_videos_in_flight"] == 0
    served = set(re.findall(r"^(ray_vidfeat_\w+)[{ ]", watched.text, re.M))
    dashboard = open(os.path.join(ROOT, "docs", "grafana_dashboard.json")).read()
    asked = set(re.findall(r"ray_vidfeat_\w+", dashboard))
    assert len(asked) >= 7 and asked <= served, asked - served         # the dashboard asks for real series


def test_counters_take_what_the_summary_gained_since_the_last_update(monkeypatch):
    sent = []

    class Counter:
        def __init__(self, name, *a, **kw):
            self.name = name

        def inc(self, value, tags):
            sent.append((self.name, value, tags["run"]))

    monkeypatch.setattr("ray.util.metrics.Counter", Counter)
    metrics = run_metrics.RunMetrics("r1")
    summary = SimpleNamespace(ok=2, failed=0, clips=5, video_hours=0.5, decode_s=1.5, infer_s=0.25,
                              bytes_written=1000)
    metrics.update(summary)
    summary.ok, summary.clips, summary.bytes_written = 3, 7, 1500
    metrics.update(summary)
    metrics.update(summary)                                              # nothing new: nothing sent
    totals = {}
    for name, value, run in sent:
        assert run == "r1" and value > 0
        totals[name] = totals.get(name, 0) + value
    assert totals == {"vidfeat_videos_done": 3, "vidfeat_clips": 7, "vidfeat_video_seconds": 1800,
                      "vidfeat_decode_seconds": 1.5, "vidfeat_infer_seconds": 0.25, "vidfeat_bytes_written": 1500}
    assert metrics.expected()["ray_vidfeat_clips"] == 7


def test_rows_waiting_are_the_decoded_rows_not_yet_out_of_inference():
    def op(name, inputs=(), **fields):
        return SimpleNamespace(name=name, input_dependencies=list(inputs), metrics=SimpleNamespace(**fields))

    source = op("Input", rows_task_outputs_generated=0)
    read = op("ReadVideoSource->MapBatches(decode_videos)", [source], rows_task_outputs_generated=30)
    infer = op("MapBatches(ClipEmbedder)", [read], rows_task_outputs_generated=21)
    assert rows_waiting([source, read, infer]) == 30 - 21


def test_a_metrics_port_that_cannot_be_served_is_refused_before_ray_starts():
    import socket

    from pipeline.errors import ConfigError
    from pipeline.run.cluster import _check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot be served"):
            _check_port_free(taken.getsockname()[1])
    with pytest.raises(ConfigError, match="1-65535"):
        _check_port_free(70000)
    _check_port_free(0)                                                   # 0: no metrics served, no check


WAITING_SCRIPT = """
import json, os, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import numpy as np, ray
from pipeline.run.queue import watching

class ClipEmbedder:                      # named like the pipeline's inference stage; slower than its input
    def __call__(self, batch):
        time.sleep(0.05)
        return batch

def one_row_batches(batch):              # like the decode stage: one row per yielded batch, and resources
                                         # of its own (not fused with inference)
    for x in batch["id"]:
        yield {"id": np.array([x])}

ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=2)
ds = ray.data.range(100, override_num_blocks=2).map_batches(one_row_batches, batch_size=None, num_cpus=0.5)
ds = ds.map_batches(ClipEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
seen = []
with watching(ds, seen.append):
    rows = sum(len(b["id"]) for b in ds.iter_batches(batch_size=None))
print("RESULT", json.dumps({"rows": rows, "seen": seen}))
ray.shutdown()
"""


def test_rows_waiting_read_from_a_real_ray_data_executor_rise_while_inference_lags_and_end_at_zero():
    done = subprocess.run([sys.executable, "-c", WAITING_SCRIPT], env=ray_env(), capture_output=True, text=True,
                          timeout=300)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and line, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(line[0][len("RESULT "):])
    seen = result["seen"]
    assert result["rows"] == 100 and len(seen) >= 3, seen
    assert max(seen) > 1 and all(0 <= v <= 100 for v in seen) and seen[-1] == 0, seen


HOLD_SCRIPT = """
import signal, sys, threading, time
from types import SimpleNamespace
from pipeline.run.metrics import hold_final
metrics = SimpleNamespace(expected=lambda: {"ray_vidfeat_clips": 3.0})

def announce():                                  # once the hold has taken SIGTERM
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        time.sleep(0.01)
    print("holding", flush=True)

threading.Thread(target=announce, daemon=True).start()
seen = hold_final(metrics, int(sys.argv[1]), linger_s=3600, timeout_s=3600)
print("returned", seen, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


def test_a_signal_ends_the_hold_of_the_final_values_and_the_handlers_are_restored():
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(free_port())], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "holding"
    proc.send_signal(signal.SIGTERM)                       # a scheduler's stop while nothing serves the port
    out, _ = proc.communicate(timeout=120)                 # a bound on waiting: the hold is an hour
    assert proc.returncode == 0 and out.split() == ["returned", "False", "True"], out


def test_a_negative_linger_is_no_linger():
    from pipeline.run.metrics import hold_final

    metrics = SimpleNamespace(expected=lambda: {})
    assert hold_final(metrics, free_port(), linger_s=-5, timeout_s=0) is False
