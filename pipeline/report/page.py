"""`vidfeat report OUT [--html FILE]`: one self-contained HTML page about an output directory.

What it shows: the run history (`runs/*.json`: videos, clips, video-hours, throughput, time per stage),
the failures grouped by stage and kind with a few examples, histograms of video duration and clips per
video, and a nearest-neighbour gallery — for a few videos, thumbnails of the query and of its top-k
neighbours by cosine similarity of the video embeddings, with the scores.

Self-contained: styles inline, charts as inline SVG (`pipeline.report.svg`), thumbnails as JPEG data URIs
(`pipeline.report.thumbnails`); no script, no link, nothing fetched when it is viewed. Reads through the
project's readers (committed parts only), on local disk or any fsspec URL. Run records are read
tolerantly: a missing field shows as "–", an unreadable record as a note.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from html import escape

import numpy as np

from pipeline.report import svg
from pipeline.errors import ConfigError
from pipeline.read.features import lookup_videos
from pipeline.read.parts import read_table
from pipeline.store.ledger import Ledger
from pipeline.text import printable
from pipeline.read.neighbours import nearest_to
from pipeline.store.publish import publish_bytes
from pipeline.report.thumbnails import strip_data_uri

log = logging.getLogger(__name__)

STAGES = (("decode_s", "decode"), ("infer_s", "inference"), ("commit_s", "commit"))
EXAMPLES = 3                                   # failures shown per (stage, kind)
CHART_RUNS = 40                                # the newest runs drawn in the charts
THUMBS, THUMB_HEIGHT = 3, 54                   # frames per thumbnail strip, their height in px


@dataclass
class ReportData:
    """What the page shows, gathered from an output directory."""

    out: str
    runs: list[dict] = field(default_factory=list)          # run records, oldest first
    notes: list[str] = field(default_factory=list)          # records that could not be read
    failures: list[dict] = field(default_factory=list)      # groups: stage, kind, count, examples
    videos: dict = field(default_factory=dict)              # video_id, num_clips, duration_s lists
    gallery: list[dict] = field(default_factory=list)       # per query: video, neighbours (id, uri, score)
    pinned: dict = field(default_factory=dict)              # run.json


def gather(out: str, queries: int = 4, k: int = 4) -> ReportData:
    """Read everything the page needs from `out` (local path or fsspec URL)."""
    ledger = Ledger(out)
    state = ledger.load()
    data = ReportData(out=out, pinned=_dict(_read_json(ledger, ledger.path("run.json"))))
    data.runs, data.notes = read_runs(ledger)
    if not (data.pinned or data.runs or state.parts):
        raise ConfigError(f"{out} is not a vidfeat output directory: no run.json, run record or committed part")
    data.failures = failure_groups(state.failures.to_pylist())
    columns = ["video_id", "num_clips", "duration_s"]
    data.videos = read_table(out, "videos", columns).to_pydict()
    ids = data.videos["video_id"]
    data.gallery = neighbour_gallery(out, queries, k, video_ids=ids) if ids else []
    return data


def read_runs(ledger: Ledger) -> tuple[list[dict], list[str]]:
    """Run records (runs/<run_id>.json), oldest first, and a note per record that could not be read."""
    runs, notes = [], []
    for path in ledger.ls("runs"):
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith((".", "_")):
            continue
        record = _read_json(ledger, path)
        if isinstance(record, dict):
            runs.append({"run_id": name[:-5], **record})
        else:
            notes.append(f"{name}: not a readable run record")
    return sorted(runs, key=lambda r: str(r["run_id"])), notes


def _read_json(ledger: Ledger, path: str):
    try:
        with ledger.fs.open(path, "r") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        log.info("cannot read %s: %s", path, exc)
        return None


def failure_groups(failures: list[dict]) -> list[dict]:
    """Failures grouped by (stage, kind) — kind is the error's text before the first ':' — most
    frequent first, each with its count and up to EXAMPLES examples."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for f in sorted(failures, key=lambda f: str(f.get("video_id"))):
        kind = str(f.get("error") or "unknown").split(":", 1)[0].strip() or "unknown"
        groups.setdefault((str(f.get("stage") or "?"), kind), []).append(f)
    return [{"stage": stage, "kind": kind, "count": len(items), "examples": items[:EXAMPLES]}
            for (stage, kind), items in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))]


def neighbour_gallery(out: str, queries: int = 4, k: int = 4, video_ids: list[str] | None = None) -> list[dict]:
    """For up to `queries` committed videos spread over the commit order: their k nearest videos (cosine),
    found one part at a time (pipeline/read/neighbours.py). `video_ids`: the output's ids in commit order,
    when the caller has read them already."""
    ids = video_ids if video_ids is not None else read_table(out, "videos", ["video_id"]).column("video_id").to_pylist()
    picks = sorted(set(np.linspace(0, len(ids) - 1, min(queries, len(ids))).round().astype(int)))
    chosen = lookup_videos(out, [ids[i] for i in picks], fields=("embedding",))
    hits = nearest_to(out, chosen, k=k)
    return [{"video_id": vid, "uri": uri,
             "neighbours": [{"video_id": v, "uri": u, "score": float(s)}
                            for v, u, s in zip(hits.ids[q], hits.uris[q], hits.scores[q])]}
            for q, (vid, uri) in enumerate(zip(chosen.ids, chosen.uris))]


# ====================================================================== HTML

def render(data: ReportData) -> str:
    """The whole page."""
    sections = [_overview(data), _runs(data), _failures(data), _distributions(data), _gallery(data)]
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>vidfeat report: "
            f"{escape(data.out)}</title><style>{CSS}</style></head><body>{''.join(sections)}</body></html>")


def _overview(data: ReportData) -> str:
    v = data.videos
    hours = sum(x or 0 for x in v.get("duration_s", [])) / 3600
    failed = sum(g["count"] for g in data.failures)
    model = _dict(_dict(data.pinned.get("features")).get("model"))
    facts = [("output", data.out), ("videos done", len(v.get("video_id", []))), ("videos failed", failed),
             ("clips", sum(x or 0 for x in v.get("num_clips", []))), ("video-hours", f"{hours:.3f}"),
             ("runs", len(data.runs)), ("model", model.get("preset", "–")),
             ("checkpoint", model.get("checkpoint", "–")), ("fingerprint", data.pinned.get("fingerprint", "–")),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    last_model = _dict(_dict(data.runs[-1].get("config")).get("model")) if data.runs else {}
    checkpoint = model.get("checkpoint") or last_model.get("checkpoint")
    note = ('<p class="warn">The last run used random model weights (<code>--checkpoint random</code>): '
            'the features, and so the neighbours below, are meaningless.</p>') if checkpoint == "random" else ""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(x))}</td></tr>" for k, x in facts)
    return f"<h1>vidfeat report</h1>{note}<table class=\"facts\">{rows}</table>"


def _runs(data: ReportData) -> str:
    if not data.runs:
        return "<h2>Runs</h2><p>No run record in <code>runs/</code>.</p>" + _notes(data.notes)
    head = ("run", "started", "ok", "failed", "skipped", "clips", "video-h", "wall", "video-h/h",
            *(label for _, label in STAGES), "devices")
    rows = [_run_row(r) for r in reversed(data.runs)]
    recent = data.runs[-CHART_RUNS:]
    labels = [str(i + 1 + len(data.runs) - len(recent)) for i in range(len(recent))]
    charts = (svg.bar_chart(labels, {"": [_throughput(r) or 0 for r in recent]},
                            "Throughput per run", "video-hours per hour")
              + svg.bar_chart(labels, {label: [_num(_summary(r), key) or 0 for r in recent] for key, label in STAGES},
                              "Time per stage", "seconds (summed over workers)"))
    return (f"<h2>Runs</h2><div class=\"charts\">{charts}</div>{_table(head, rows)}{_notes(data.notes)}"
            "<p class=\"small\">Runs are numbered from the oldest; times per stage are summed over workers.</p>")


def _run_row(run: dict) -> list[str]:
    s = _summary(run)
    stages = [_fmt(_num(s, key), "{:.1f} s") for key, _ in STAGES]
    return [str(run["run_id"]), _started(str(run["run_id"])), *(_fmt(_num(s, k), "{:.0f}") for k in
            ("ok", "failed", "skipped", "clips")), _fmt(_num(s, "video_hours"), "{:.3f}"),
            _fmt(_num(s, "wall_s"), "{:.1f} s"), _fmt(_throughput(run), "{:.2f}"), *stages,
            (", ".join(map(str, s["devices"])) or "–") if isinstance(s.get("devices"), list)
            else str(s.get("devices", "–"))]


def _summary(run: dict) -> dict:
    return _dict(run.get("summary"))


def _dict(value) -> dict:
    """`value` if it is a dict, else {} (run records and run.json are read tolerantly)."""
    return value if isinstance(value, dict) else {}


def _num(d: dict, key: str) -> float | None:
    try:
        value = float(d[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _throughput(run: dict) -> float | None:
    """Video-hours per hour of wall time (= video-seconds per second)."""
    s = _summary(run)
    if _num(s, "video_s_per_s") is not None:
        return _num(s, "video_s_per_s")
    hours, wall = _num(s, "video_hours"), _num(s, "wall_s")
    return hours * 3600 / wall if hours is not None and wall else None


def _started(run_id: str) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.strptime(run_id[:15], "%Y%m%dT%H%M%S"))
    except ValueError:
        return "–"


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _failures(data: ReportData) -> str:
    if not data.failures:
        return "<h2>Failures</h2><p>No failed video.</p>"
    rows = [[g["stage"], g["kind"], str(g["count"]),
             "<br>".join(f"<code>{escape(str(f.get('video_id')))}</code>: {escape(str(f.get('error')))}"
                         for f in g["examples"])] for g in data.failures]
    return "<h2>Failures</h2>" + _table(("stage", "kind", "videos", "examples"), rows, raw_last=True)


def _distributions(data: ReportData) -> str:
    durations = [x for x in data.videos.get("duration_s", []) if x is not None]
    minutes = bool(durations) and max(durations) > 600
    values = [x / 60 for x in durations] if minutes else durations
    return ("<h2>Videos</h2><div class=\"charts\">"
            + svg.histogram(values, "Video duration", "minutes" if minutes else "seconds")
            + svg.histogram([x for x in data.videos.get("num_clips", []) if x is not None], "Clips per video",
                            "clips", integer=True) + "</div>")


def _gallery(data: ReportData) -> str:
    if not data.gallery:
        return "<h2>Nearest neighbours</h2><p>No committed video.</p>"
    cache: dict[str, tuple[str | None, str | None]] = {}
    blocks = []
    for q in data.gallery:
        cells = [_thumb(q["video_id"], q["uri"], "query", cache)]
        cells += [_thumb(n["video_id"], n["uri"], f"cosine {n['score']:.3f}", cache) for n in q["neighbours"]]
        if not q["neighbours"]:
            cells.append('<div class="cell"><p class="small">no other video to compare with</p></div>')
        blocks.append(f"<div class=\"query\">{''.join(cells)}</div>")
    return ("<h2>Nearest neighbours</h2><p class=\"small\">Each row: a video (left) and its nearest committed "
            "videos by cosine similarity of the video embeddings, best first.</p>" + "".join(blocks))


def _thumb(video_id: str, uri: str, caption: str, cache: dict) -> str:
    if uri not in cache:
        cache[uri] = strip_data_uri(uri, count=THUMBS, height=THUMB_HEIGHT, video_id=video_id)
    src, problem = cache[uri]
    picture = (f'<img src="{src}" alt="frames of {escape(video_id)}">' if src else
               f'<div class="missing">no preview<br>{escape(problem or "")}</div>')
    return (f'<div class="cell">{picture}<div class="caption"><code>{escape(video_id)}</code><br>'
            f'{escape(caption)}</div></div>')


def _table(head, rows: list[list[str]], raw_last: bool = False) -> str:
    """Cells are escaped, except the last column's when `raw_last` (already HTML)."""
    cells = lambda row: "".join(f"<td>{c if raw_last and i == len(row) - 1 else escape(c)}</td>"   # noqa: E731
                                for i, c in enumerate(row))
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
            + "".join(f"<tr>{cells(r)}</tr>" for r in rows) + "</table>")


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="warn">{escape(n)}</p>' for n in notes)


CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}h1{margin:0 0 12px}
h2{margin-top:28px;border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
table.facts th{width:140px}.charts{display:flex;flex-wrap:wrap;gap:16px}.charts svg{border:1px solid #eee}
.warn{background:#fff4e0;border:1px solid #f0c070;padding:6px 10px}.small{font-size:12px;color:#666}
.query{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:10px 0;padding:8px;
border:1px solid #eee}.query .cell:first-child{border-right:3px solid #4e79a7;padding-right:12px}
.cell{font-size:12px;max-width:420px}.cell img{display:block;height:54px}
.missing{height:54px;width:200px;background:#eee;color:#888;display:flex;align-items:center;
justify-content:center;text-align:center;font-size:11px;overflow:hidden}code{font-size:12px}"""


# ====================================================================== CLI

def write_report(out: str, html: str | None = None, queries: int = 4, k: int = 4) -> str:
    """Gather, render and publish the page; returns where it was written."""
    target = html or Ledger(out).url("report.html")
    publish_bytes(render(gather(out, queries, k)).encode("utf-8"), target)
    return target


def cmd_report(args: argparse.Namespace) -> int:
    print(f"report: {printable(write_report(args.out, args.html, args.queries, args.top))}")
    return 0
