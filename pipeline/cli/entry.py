"""vidfeat command line: extract | status | verify | compact | inspect | search | index | dedup | report | demo (contract: DESIGN.md §4).

Exit codes, one meaning each (DESIGN.md §5; 69, 70, 74, 75 from sysexits.h; the mapping: pipeline/cli/exits.py):
  0   done (verify: no problem found)          1   finished, but videos failed, or verify found problems
  2   bad usage, configuration, input or checkpoint; an output directory that is none (a typo) or is
      damaged (VidfeatError, DamagedOutputError included; a command-line path that does not exist)
  3   stopped by --max-failure-rate (what was finished is committed)
  70  unexpected error (a bug)   74  I/O error: any other OSError (disk full, EIO, permission, storage)
      — one line on stderr with the exception's type, message and file; the traceback in a log file
  69  the Ray cluster failed under the run (its raylet or GCS died, a node was lost for good); run again
  75  lease lost: another writer took the output over; committed work is safe; run again
  130 interrupted (SIGINT), 143 terminated (SIGTERM): in-flight clips finished first (--drain-s), finished
      work committed, the run recorded as interrupted, lease released; run again (pipeline/run/drain.py)
No traceback reaches the console unless --verbose; text from the data passes through `printable`.
`run_cli` is the process entry point (`vidfeat`, `python -m pipeline`, `python -m jobs.extract`): it
leaves with `os._exit` after flushing and the atexit hooks, so native destructors cannot turn the code
into SIGABRT at teardown. `main(argv)` returns the code (tests call it in process).
"""
from __future__ import annotations

import argparse
import signal
import sys

from pipeline.cli import exits
from pipeline.cli.commands import (add_dedup_arguments, add_extract_arguments, add_index_arguments,
                                   add_report_arguments, add_search_arguments, add_verbose_argument, cmd_compact,
                                   cmd_dedup, cmd_demo, cmd_extract, cmd_index, cmd_inspect, cmd_report,
                                   cmd_search, cmd_status, cmd_verify)
from pipeline.cli.preflight import add_plan_arguments, cmd_plan
from pipeline.errors import Terminated


__all__ = ["build_parser", "main", "run_cli"]


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
    for name, text, add_arguments, func in (       # commands whose arguments their own module declares
            ("search", "nearest committed videos (cosine) of a video or of query embeddings",
             add_search_arguments, cmd_search),
            ("index", "build or extend the approximate index of an output's embeddings (faiss)",
             add_index_arguments, cmd_index),
            ("dedup", "groups of near-duplicate videos (or moments) as Parquet, with a report",
             add_dedup_arguments, cmd_dedup),
            ("report", "one self-contained HTML page: runs, failures, distributions, neighbours",
             add_report_arguments, cmd_report),
            ("plan", "preflight: probe a sample, estimate hours, failures, vCPU/GPU-hours, nodes",
             add_plan_arguments, cmd_plan)):
        p = sub.add_parser(name, help=text)
        add_arguments(p)
        p.set_defaults(func=func)
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
    from pipeline.cli.console import configure_logging

    configure_logging(args.verbose)
    try:
        with exits.sigterm_raises():
            return args.func(args)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:                 # ray.init's SIGTERM handler calls sys.exit(15)
            raise
        return exits.report(Terminated(), args)
    except (Exception, KeyboardInterrupt, Terminated) as exc:
        return exits.report(exc, args)


def run_cli(argv: list[str] | None = None) -> None:
    """The process entry point: `main(argv)`, then `exit_now` with its code (exits.py: no SIGABRT at
    teardown); `extract` and `demo` run in a watched child (supervise.py). Not for tests, which call `main`."""
    from pipeline.cli import supervise

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
