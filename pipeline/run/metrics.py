"""Live metrics of a run, exported through Ray's metrics API, so that the Ray dashboard, Prometheus and
Grafana (docs/grafana_dashboard.json) show a running extraction.

Counters (Prometheus names: Ray adds the `ray_` prefix, Prometheus the `_total` suffix), each tagged
with the run's id (`run`):

    ray_vidfeat_videos_done_total     videos extracted and handed to the writer (the summary's `ok`)
    ray_vidfeat_videos_failed_total   videos that failed (`failed`)
    ray_vidfeat_clips_total           clips of the videos done (`clips`)
    ray_vidfeat_video_seconds_total   seconds of video done (`video_hours` × 3600)
    ray_vidfeat_decode_seconds_total  seconds the decode tasks spent on the clips that came back (`decode_s`)
    ray_vidfeat_infer_seconds_total   seconds the inference actors spent on them (`infer_s`)
    ray_vidfeat_bytes_written_total   bytes of Parquet and HDF5 committed (`bytes_written`)

Gauges: `ray_vidfeat_rows_waiting` (decoded clips not yet out of inference: queued for it or in a batch,
read from Ray Data's executor at each of its steps, queue.py) and
`ray_vidfeat_videos_in_flight` (videos some clips of have come back, but not all).

The driver owns the numbers: `RunMetrics.update(summary)` adds to each counter what the summary gained
since the last call, so the counters equal the run summary whenever they are read after an update. Ray's
agent publishes them every `metrics_report_interval_ms`; an embedded run started with `--metrics-port`
serves them on 127.0.0.1 (cluster.py) and, at its end, keeps serving until the endpoint shows the final
values and then `run.metrics_linger_s` more (one scrape of Prometheus), so the last scrape is the summary.
On a cluster, every node's agent serves its own (`ray start --metrics-export-port`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.request
from typing import Iterator

log = logging.getLogger(__name__)

COUNTERS = {
    "videos_done": ("videos extracted", lambda s: s.ok),
    "videos_failed": ("videos that failed", lambda s: s.failed),
    "clips": ("clips of the videos extracted", lambda s: s.clips),
    "video_seconds": ("seconds of video extracted", lambda s: s.video_hours * 3600),
    "decode_seconds": ("seconds of decoding of the clips back", lambda s: s.decode_s),
    "infer_seconds": ("seconds of inference of the clips back", lambda s: s.infer_s),
    "bytes_written": ("bytes of features committed", lambda s: s.bytes_written),
}
GAUGES = {"rows_waiting": "decoded clips not yet out of inference",
          "videos_in_flight": "videos some clips of are back, not all"}


class RunMetrics:
    """The run's counters and gauges, tagged with its id."""

    def __init__(self, run_id: str):
        from ray.util.metrics import Counter, Gauge

        self.tags = {"run": run_id}
        self.counters = {name: Counter(f"vidfeat_{name}", desc, tag_keys=("run",))
                         for name, (desc, _) in COUNTERS.items()}
        self.gauges = {name: Gauge(f"vidfeat_{name}", desc, tag_keys=("run",)) for name, desc in GAUGES.items()}
        self.sent = dict.fromkeys(COUNTERS, 0.0)

    def update(self, summary) -> None:
        """Add to each counter what `summary` gained since the last update."""
        for name, (_, value) in COUNTERS.items():
            delta = float(value(summary)) - self.sent[name]
            if delta > 0:
                self.counters[name].inc(delta, tags=self.tags)
                self.sent[name] += delta

    def set(self, name: str, value: float) -> None:
        self.gauges[name].set(float(value), tags=self.tags)

    def expected(self) -> dict[str, float]:
        """The Prometheus series this run has sent: name → value."""
        return {f"ray_vidfeat_{name}": value for name, value in self.sent.items()}


@contextlib.contextmanager
def live_metrics(ds, summary, port: int = 0, linger_s: float = 0.0) -> Iterator["RunMetrics"]:
    """The run's metrics while in the block, rows waiting watched from `ds`'s executor (queue.py).
    On leaving, the final update; with `port` (served by this process's embedded Ray) and a run that was
    not interrupted, the final values held on it (`hold_final`)."""
    from pipeline.run.queue import watching

    metrics = RunMetrics(summary.run_id)
    with watching(ds, lambda rows: metrics.set("rows_waiting", rows)):
        try:
            yield metrics
        finally:
            _final_update(metrics, summary)
    if port and not summary.interrupted:
        hold_final(metrics, port, linger_s)


def _final_update(metrics: RunMetrics, summary) -> None:
    """The last update; a Ray that failed under the run must not hide why the run ended."""
    try:
        metrics.update(summary)
        metrics.set("videos_in_flight", 0)
    except Exception as exc:                                   # noqa: BLE001 - see docstring
        log.warning("could not send the run's final metrics: %s: %s", type(exc).__name__, exc)


def scrape(port: int, timeout_s: float = 2.0) -> dict[str, float]:
    """The `ray_vidfeat_*` series served on 127.0.0.1:`port`, summed over their labels (`_total` dropped)."""
    return parse(scrape_text(port, timeout_s))


def scrape_text(port: int, timeout_s: float = 2.0) -> str:
    """What 127.0.0.1:`port`/metrics serves (Prometheus' text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        return r.read().decode()


def parse(text: str) -> dict[str, float]:
    """The `ray_vidfeat_*` series of a scrape, summed over their labels (`_total` dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_vidfeat_"):
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0].removesuffix("_total")
            values[name] = values.get(name, 0.0) + float(value)
    return values


def hold_final(metrics: RunMetrics, port: int, linger_s: float, timeout_s: float = 30.0) -> bool:
    """Wait until 127.0.0.1:`port` serves the run's final counters (at most `timeout_s`; logged once seen),
    then `linger_s` more. Whether they were seen. A SIGTERM or SIGINT meanwhile ends the wait at once and is
    passed on to the run's stop: the run then folds, records itself as interrupted and releases its output
    as usual (a scheduler's stop must not wait for it)."""
    from pipeline.run.drain import stop_signals

    want, deadline, seen, stop = metrics.expected(), time.monotonic() + timeout_s, False, threading.Event()
    with stop_signals(lambda *_: stop.set(), passed_on=True):
        while not seen and not stop.is_set() and time.monotonic() < deadline:
            try:
                got = scrape(port)
                seen = all(abs(got.get(k, 0.0) - v) <= 1e-6 * max(1.0, v) for k, v in want.items())
            except OSError:
                pass
            if not seen:
                stop.wait(0.2)
        if seen:
            log.info("the run's final metrics are served on 127.0.0.1:%d; held there %.0f s more", port, linger_s)
        elif not stop.is_set():
            log.warning("the metrics on port %d did not reach the run's final values within %.0f s", port,
                        timeout_s)
        stop.wait(max(0.0, linger_s))
    return seen
