"""The commands of the CLI (pipeline/cli/entry.py builds the parser and runs them): each `cmd_*` takes the parsed
arguments and returns an exit code (pipeline/cli/exits.py); `add_*_arguments` declare what a command takes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from pipeline.errors import ConfigError
from pipeline.cli.exits import EXIT_ABORTED, EXIT_FAILURES, EXIT_OK
from pipeline.text import printable


def add_extract_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments of `vidfeat extract` (shared with `python -m jobs.extract`)."""
    ap.add_argument("source", help="manifest (csv/parquet/jsonl with uri[, video_id]) or a directory/glob of videos")
    ap.add_argument("--out", required=True, help="output directory (local path or fsspec URL)")
    ap.add_argument("--config", help="YAML config (see jobs/*.yaml); flags below override it")
    ap.add_argument("--preset", help="model preset (default: timesformer-l-howto100m)")
    ap.add_argument("--checkpoint", help="checkpoint path/URL, or 'random' for seeded random weights")
    ap.add_argument("--seed", type=int, help="seed of random weights")
    ap.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS, else an embedded local Ray)")
    ap.add_argument("--retry-failed", action="store_true", help="redo videos that failed in earlier runs")
    ap.add_argument("--redo-changed", action="store_true",
                    help="extract again committed videos whose uri in the manifest changed (old rows retired)")
    ap.add_argument("--max-failure-rate", type=float, help="stop (exit 3) when more than this fraction fails")
    ap.add_argument("--drain-s", type=float,
                    help="on SIGTERM/SIGINT, seconds the clips in flight may take to finish (default 60)")
    ap.add_argument("--metrics-port", type=int,
                    help="serve the run's Prometheus metrics on 127.0.0.1:PORT (an embedded Ray; "
                         "a cluster's nodes serve their own)")
    ap.add_argument("--batch-size", type=int, help="clips per inference batch")
    ap.add_argument("--num-actors", type=int, help="inference actors (default: one per GPU, else 1)")
    ap.add_argument("--crops", type=int, choices=(1, 3), help="1 centre crop or 3 crops along the long side")
    ap.add_argument("--decode-mode", choices=("fast", "exact"), help="decode reference frames only, or exactly")
    ap.add_argument("--videos-per-task", type=int, help="videos one decode task takes (default: from the corpus size)")
    ap.add_argument("--no-compact", action="store_true", help="do not merge small parts into large files at the end")
    ap.add_argument("--no-progress", action="store_true", help="no progress line")
    add_verbose_argument(ap)


def add_verbose_argument(ap: argparse.ArgumentParser) -> None:
    """-v/--verbose, also after the subcommand (SUPPRESS: an absent flag keeps the top-level value)."""
    ap.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                    help="show Ray's and Ray Data's logs and our info messages on the console")


def config_from_args(args: argparse.Namespace):
    """YAML (if any), then the preset, then each flag given."""
    import yaml

    from pipeline.config import Config

    data: dict = {}
    if args.config:
        import fsspec

        with fsspec.open(args.config, "r") as fh:
            data = yaml.safe_load(fh) or {}
    sections = {k: dict(data.get(k) or {}) for k in ("model", "sampling", "preprocess", "decode", "run")}
    if args.preset:
        sections["model"]["preset"] = args.preset
    flags = {("model", "checkpoint"): args.checkpoint, ("model", "seed"): args.seed,
             ("run", "address"): args.address, ("run", "max_failure_rate"): args.max_failure_rate,
             ("run", "batch_size"): args.batch_size, ("run", "num_actors"): args.num_actors,
             ("preprocess", "crops"): args.crops, ("decode", "mode"): args.decode_mode,
             ("run", "videos_per_task"): args.videos_per_task, ("run", "drain_s"): args.drain_s,
             ("run", "metrics_port"): args.metrics_port}
    for (section, key), value in flags.items():
        if value is not None:
            sections[section][key] = value
    if args.retry_failed:
        sections["run"]["retry_failed"] = True
    if args.redo_changed:
        sections["run"]["redo_changed"] = True
    if args.no_compact:
        sections["run"]["compact"] = False
    try:
        return Config.from_dict({**data, **sections})
    except (TypeError, ValueError) as exc:
        from pipeline.errors import ConfigError

        raise ConfigError(str(exc)) from None


def cmd_extract(args: argparse.Namespace) -> int:
    from pipeline.cli import console
    from pipeline.run.runner import FailureRateExceeded, run_extract

    config = config_from_args(args)
    with console.ray_logs_to_file(console.log_path("extract"), args.verbose) as log_file:
        args.log_file = log_file                             # where an unexpected error's traceback goes
        print(f"Ray's logs: {printable(log_file)}" + ("" if args.verbose else " (--verbose shows them here)"),
              flush=True)
        try:
            summary = run_extract(args.source, args.out, config,
                                  listener=console.ConsoleListener(progress=not args.no_progress))
        except FailureRateExceeded as exc:
            print(f"vidfeat extract: stopped: {printable(exc)}", file=sys.stderr)
            return EXIT_ABORTED
    console.print_summary(summary.to_dict(), config.model.checkpoint, out=args.out)
    if summary.interrupted:
        return interrupted("extract", summary.interrupted, f"{summary.ok + summary.failed} videos finished this run")
    return EXIT_FAILURES if summary.failed else EXIT_OK


def interrupted(command: str, signal_name: str, detail: str = "") -> int:
    """The one line and the code (130 SIGINT, 143 SIGTERM) of a command stopped gracefully by a signal."""
    import signal

    from pipeline.cli.exits import RESUMES

    print(f"vidfeat {command}: {'interrupted' if signal_name == 'SIGINT' else 'terminated'} ({signal_name}); "
          f"{RESUMES}{f' ({detail})' if detail else ''}", file=sys.stderr)
    return 128 + signal.Signals[signal_name]


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.cli.console import changed_lines, failure_lines
    from pipeline.read.status import status

    require_output(args.out)
    report = status(args.out, source=args.source)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{printable(args.out)}: {report['done']} done, {report['failed']} failed, "
              f"{report['pending'] if report['pending'] is not None else '?'} pending; {report['parts']} parts")
        for line in failure_lines(report["failures"], report["failed"], args.out) + changed_lines(
                report["changed_videos"], report["changed"] or 0):
            print(line)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.read.verify import verify

    require_output(args.out)
    report = verify(args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{printable(args.out)}: {report['videos']} videos, {report['clips']} clips in {report['parts']} parts")
        for problem in report["problems"]:
            print(f"  PROBLEM: {printable(problem)}")
        print("OK" if report["ok"] else f"FAILED: {len(report['problems'])} problem(s)")
    return EXIT_OK if report["ok"] else EXIT_FAILURES


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact OUT. The first SIGTERM / SIGINT finishes or abandons the merge under way (compaction.py),
    folds, releases the lease and exits 143 / 130; a second one stops at once. Then the output's search
    indexes name the merged segments (pipeline/index/build.py)."""
    from pipeline.run.drain import GracefulStop

    require_output(args.out)
    stop = GracefulStop(on_signal=lambda name, _: print(f"{name}: finishing or abandoning the merge under way; "
                                                        f"a second {name} stops at once", file=sys.stderr))
    with stop.handling():
        report, indexes = _compact_and_reindex(args.out, args.target_mb, stop)
    if args.json:
        print(json.dumps({**report, "indexes": [dataclasses.asdict(i) for i in indexes]}, indent=2))
    else:
        print(f"{printable(args.out)}: merged {report['segments_before']} segments into {report['segments_after']} "
              f"({report['groups']} merges, {report['bytes_rewritten'] / 2**20:.1f} MiB written, "
              f"{report['seconds']:.1f} s)")
        for sub, n in report["files_before"].items():
            print(f"  {sub}/: {n} → {report['files_after'][sub]} files")
        for index in indexes:
            print(f"  {index.kind} index: {index.action} ({index.rows:,} rows, generation {index.generation})")
    return interrupted("compact", stop.name, "the rest is merged by the next compaction") if stop.signal else EXIT_OK


def _compact_and_reindex(out: str, target_mb: float, stop) -> tuple[dict, list]:
    """Compact `out`, then bring its search indexes up to date (the segments they name), under one claim:
    (the compaction report as a dict, the index reports)."""
    from pipeline.index.build import refresh_all
    from pipeline.store.compaction import compact
    from pipeline.store.lease import WriterLease
    from pipeline.store.ledger import Ledger

    ledger = Ledger(out)
    with WriterLease(ledger) as lease:
        ledger.claim(lease)
        report = dataclasses.asdict(compact(ledger, target_mb=target_mb, stop=lambda: stop.signal is not None))
        return report, [] if stop.signal else refresh_all(ledger)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.config import Config
    from pipeline.decode.inspect import dump_frames, inspect_video

    config = Config.from_preset(args.preset)
    report = inspect_video(args.video, config)
    if args.dump_frames:
        dump_frames(args.video, args.dump_frames, config)
    if args.json:
        print(json.dumps(report))
    else:
        v = report["video"]
        print(f"{printable(args.video)}: {v['width']}x{v['height']}, {v['fps']:.3f} fps, {v['num_frames']} frames, "
              f"{v['duration_s']:.2f} s")
        for c in report["clips"]:
            print(f"  clip {c['index']}: {c['start_s']:.2f}-{c['end_s']:.2f} s, {c['valid_frames']} valid, "
                  f"frames {c['frame_indices'][0]}..{c['frame_indices'][-1]}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate sample videos, then run the real pipeline on them with a random-weight `tiny` model."""
    from pipeline.synthetic.demo_set import write_demo_set

    videos = os.path.join(args.out, "samples")
    write_demo_set(videos)
    print(f"wrote {len(os.listdir(videos))} sample videos to {printable(videos)}")
    print("running the pipeline with RANDOM weights of the 'tiny' preset: the machinery is real, the numbers are not")
    parser = argparse.ArgumentParser(prog="vidfeat extract")
    add_extract_arguments(parser)
    extract = parser.parse_args([videos, "--out", os.path.join(args.out, "features"), "--preset", "tiny",
                                 "--checkpoint", "random"] + (["--no-progress"] if args.no_progress else []))
    extract.verbose = args.verbose
    code = cmd_extract(extract)
    from pipeline.report.page import write_report

    features = os.path.join(args.out, "features")
    print(f"features in {printable(features)} (try: vidfeat status / vidfeat verify / vidfeat search on it)")
    print(f"report: {printable(write_report(features, os.path.join(args.out, 'report.html')))} "
          "(open it in a browser)")
    return code


def require_output(out: str) -> None:
    """Refuse (exit 2) a path that holds no vidfeat output — no `ledger/`, no `run.json`: a typo must not
    read as '0 videos, OK', nor make `compact` create the directory."""
    from fsspec.core import url_to_fs

    from pipeline.storage import guarded

    fs, path = url_to_fs(out)
    fs, path = guarded(fs), path.rstrip("/")       # an outage is waited out, not taken for "no output here"
    if not (fs.exists(f"{path}/ledger") or fs.exists(f"{path}/run.json")):
        raise ConfigError(f"{out} is not a vidfeat output directory: it holds no ledger/ and no run.json")


def cmd_search(args: argparse.Namespace) -> int:
    from pipeline.cli import search as search_cli

    require_output(args.out)
    return search_cli.cmd_search(args)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import page as report

    return report.cmd_report(args)


def add_report_arguments(ap: argparse.ArgumentParser) -> None:
    """Declared here, not in pipeline/report/page.py: building the parser loads no reader (nor torch)."""
    ap.add_argument("out", help="output directory (local path or fsspec URL)")
    ap.add_argument("--html", help="where to write the page (default: OUT/report.html)")
    ap.add_argument("--queries", type=int, default=4, help="videos shown in the neighbour gallery")
    ap.add_argument("--top", type=int, default=4, help="neighbours shown per video")


def add_search_arguments(ap: argparse.ArgumentParser) -> None:
    from pipeline.cli import search as search_cli

    search_cli.add_search_arguments(ap)


def cmd_index(args: argparse.Namespace) -> int:
    from pipeline.cli import indexing as commands

    require_output(args.out)
    return commands.cmd_index(args)


def cmd_dedup(args: argparse.Namespace) -> int:
    from pipeline.cli import indexing as commands

    require_output(args.out)
    return commands.cmd_dedup(args)


def add_index_arguments(ap: argparse.ArgumentParser) -> None:
    from pipeline.cli import indexing as commands

    commands.add_index_arguments(ap)


def add_dedup_arguments(ap: argparse.ArgumentParser) -> None:
    from pipeline.cli import indexing as commands

    commands.add_dedup_arguments(ap)
