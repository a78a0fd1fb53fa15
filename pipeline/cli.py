"""vidfeat command line: extract | status | verify | compact | inspect | search | report | demo (contract: DESIGN.md §4).

Exit codes, one meaning each (DESIGN.md §5; 69, 70, 74, 75 from sysexits.h; the mapping: pipeline/exits.py):
  0   done (verify: no problem found)          1   finished, but videos failed, or verify found problems
  2   bad usage, configuration, input or checkpoint; an output directory that is none (a typo) or is
      damaged (VidfeatError, DamagedOutputError included; a command-line path that does not exist)
  3   stopped by --max-failure-rate (what was finished is committed)
  70  unexpected error (a bug)   74  I/O error: any other OSError (disk full, EIO, permission, storage)
      — one line on stderr with the exception's type, message and file; the traceback in a log file
  69  the Ray cluster failed under the run (its raylet or GCS died, a node was lost for good); run again
  75  lease lost: another writer took the output over; committed work is safe; run again
  130 interrupted (SIGINT), 143 terminated (SIGTERM): finished work committed, lease released; run again
No traceback reaches the console unless --verbose; text from the data passes through `printable`.
`run_cli` is the process entry point (`vidfeat`, `python -m pipeline`, `python -m jobs.extract`): it
leaves with `os._exit` after flushing and the atexit hooks, so native destructors cannot turn the code
into SIGABRT at teardown. `main(argv)` returns the code (tests call it in process).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from pipeline import exits
from pipeline.errors import ConfigError
from pipeline.exits import (EXIT_ABORTED, EXIT_FAILURES, EXIT_IOERR, EXIT_OK, EXIT_SIGINT,  # noqa: F401
                            EXIT_SIGTERM, EXIT_SOFTWARE, EXIT_TEMPFAIL, EXIT_USAGE)
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
             ("run", "videos_per_task"): args.videos_per_task}
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
    from pipeline import console
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
    return EXIT_FAILURES if summary.failed else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.console import changed_lines, failure_lines
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
    import dataclasses

    from pipeline.store.compaction import compact

    require_output(args.out)
    report = dataclasses.asdict(compact(args.out, target_mb=args.target_mb))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{printable(args.out)}: merged {report['segments_before']} segments into {report['segments_after']} "
              f"({report['groups']} merges, {report['bytes_rewritten'] / 2**20:.1f} MiB written, "
              f"{report['seconds']:.1f} s)")
        for sub, n in report["files_before"].items():
            print(f"  {sub}/: {n} → {report['files_after'][sub]} files")
    return EXIT_OK


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
    from pipeline.plan.samples import write_demo_set

    videos = os.path.join(args.out, "samples")
    write_demo_set(videos)
    print(f"wrote {len(os.listdir(videos))} sample videos to {printable(videos)}")
    print("running the pipeline with RANDOM weights of the 'tiny' preset: the machinery is real, the numbers are not")
    extract = build_parser().parse_args(["extract", videos, "--out", os.path.join(args.out, "features"),
                                         "--preset", "tiny", "--checkpoint", "random"]
                                        + (["--no-progress"] if args.no_progress else [])
                                        + (["--verbose"] if args.verbose else []))
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

    fs, path = url_to_fs(out)
    path = path.rstrip("/")
    if not (fs.exists(f"{path}/ledger") or fs.exists(f"{path}/run.json")):
        raise ConfigError(f"{out} is not a vidfeat output directory: it holds no ledger/ and no run.json")


def cmd_search(args: argparse.Namespace) -> int:
    from pipeline.read import search

    require_output(args.out)
    return search.cmd_search(args)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import page as report

    return report.cmd_report(args)


def add_report_arguments(ap: argparse.ArgumentParser) -> None:
    from pipeline.report import page as report

    report.add_report_arguments(ap)


def add_search_arguments(ap: argparse.ArgumentParser) -> None:
    from pipeline.read import search

    search.add_search_arguments(ap)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vidfeat", description="Long-video TimeSformer features on Ray.")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show Ray's and Ray Data's logs and our info messages on the console")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract", help="extract features of a corpus (resumable)")
    add_extract_arguments(p)
    p.set_defaults(func=cmd_extract)
    p = sub.add_parser("status", help="done / failed / pending of an output directory")
    p.add_argument("out")
    p.add_argument("--source", help="corpus to count pending videos against (default: the last run's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("verify", help="check an output directory: every done video once, numbers consistent")
    p.add_argument("out")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("compact", help="merge small committed parts into large files (atomic, resumable)")
    p.add_argument("out")
    p.add_argument("--target-mb", type=float, default=256, help="size of a merged part's largest file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compact)
    p = sub.add_parser("inspect", help="a video's metadata, clip plan and the frames the model sees")
    p.add_argument("video")
    p.add_argument("--preset", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--dump-frames", metavar="DIR")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("search", help="nearest committed videos (cosine) of a video or of query embeddings")
    add_search_arguments(p)
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("report", help="one self-contained HTML page: runs, failures, distributions, neighbours")
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("demo", help="run the pipeline on sample videos it generates (random tiny model)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--no-progress", action="store_true")
    add_verbose_argument(p)
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: sys.argv[1:]) and return its exit code (module doc); whatever it
    raises becomes one line on stderr. Usage errors exit from argparse (SystemExit 2)."""
    args = build_parser().parse_args(argv)
    from pipeline.console import configure_logging

    configure_logging(args.verbose)
    try:
        with exits.sigterm_raises():
            return args.func(args)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:                 # ray.init's SIGTERM handler calls sys.exit(15)
            raise
        return exits.report(exits.Terminated(), args)
    except (Exception, KeyboardInterrupt, exits.Terminated) as exc:
        return exits.report(exc, args)


def run_cli(argv: list[str] | None = None) -> None:
    """The process entry point: `main(argv)`, then `exit_now` with its code (exits.py: no SIGABRT at
    teardown); `extract` and `demo` run in a watched child (supervise.py). Not for tests, which call `main`."""
    from pipeline import supervise

    argv = sys.argv[1:] if argv is None else argv
    if supervise.wanted(argv):
        exits.exit_now(supervise.supervise(argv))
    try:
        code = main(argv)
    except SystemExit as exc:                          # argparse: --help (0), a usage error (2)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    exits.exit_now(code)


if __name__ == "__main__":
    run_cli()
