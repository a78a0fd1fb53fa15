"""`vidfeat index` and `vidfeat dedup`: their arguments and what they print (wired by pipeline/cli/entry.py)."""
from __future__ import annotations

import argparse
import dataclasses
import json

from pipeline.errors import ConfigError
from pipeline.text import printable


def add_index_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("out", help="output directory (local path or fsspec URL)")
    ap.add_argument("--clips", action="store_true", help="index the clip-level embeddings (hits are moments)")
    ap.add_argument("--rebuild", action="store_true",
                    help="build anew even where an index exists (default: extend it with what it lacks)")
    ap.add_argument("--factory", help="FAISS index_factory string (default: chosen by size, see BENCHMARKS.md)")
    ap.add_argument("--nprobe", type=int, help="inverted lists visited per query, or an HNSW factory's efSearch (with --factory)")
    ap.add_argument("--rerank", type=int, help="candidates per query re-ranked exactly (with --factory)")
    ap.add_argument("--float16", action="store_true", help="keep the exact vectors for re-ranking as float16")
    ap.add_argument("--json", action="store_true")


def cmd_index(args: argparse.Namespace) -> int:
    """Build (or extend) the index of OUT and print what was done."""
    from pipeline.index.build import build_index, refresh_index
    from pipeline.index.published import read_manifest
    from pipeline.store.lease import WriterLease
    from pipeline.store.ledger import Ledger

    kind = "clips" if args.clips else "videos"
    params, dtype = _params(args), "float16" if args.float16 else "float32"
    ledger = Ledger(args.out)
    if args.rebuild or params is not None or read_manifest(ledger, kind) is None:
        report = build_index(args.out, kind, params, dtype)
    else:
        with WriterLease(ledger) as lease:
            report = refresh_index(ledger, ledger.claim(lease), kind)
    _print(dataclasses.asdict(report), args.json, f"{printable(args.out)}: {kind} index {report.action}: "
           f"{report.rows:,} rows ({report.added:,} added, {report.hidden:,} stale hidden), {report.factory}, "
           f"{report.seconds:.1f} s, generation {report.generation}")
    return 0


def _params(args: argparse.Namespace):
    from pipeline.index.ann import AnnParams

    if args.factory is None:
        if args.nprobe is not None or args.rerank is not None:
            raise ConfigError("--nprobe and --rerank go with --factory")
        return None
    return AnnParams(args.factory, 16 if args.nprobe is None else args.nprobe,
                     100 if args.rerank is None else args.rerank)


def add_dedup_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("out", help="output directory (local path or fsspec URL)")
    ap.add_argument("--threshold", type=float, required=True, metavar="T",
                    help="cosine distance (1 - cosine) within which two embeddings are duplicates, e.g. 0.02")
    ap.add_argument("--clips", action="store_true", help="groups of moments (clip embeddings), not of videos")
    ap.add_argument("--neighbours", type=int, default=32, help="neighbours looked at per vector (default 32)")
    ap.add_argument("--json", action="store_true")


def cmd_dedup(args: argparse.Namespace) -> int:
    """Write OUT/dedup/<kind>-t<T>.parquet and its report; print the report."""
    from pipeline.index.dedup import dedup

    report = dedup(args.out, args.threshold, "clips" if args.clips else "videos", args.neighbours)
    data = dataclasses.asdict(report)
    data.pop("segments")
    _print(data, args.json, f"{printable(args.out)}: {report.groups:,} groups of near-duplicate {report.kind} "
           f"({report.members:,} of {report.vectors:,} within {report.threshold:g}; largest {report.largest}); "
           f"{printable(report.table)}\n{printable(report.how)}" + (
               f"\n{report.saturated:,} had all {args.neighbours} neighbours within the threshold: "
               f"--neighbours larger may find more" if report.saturated else ""))
    return 0


def _print(data: dict, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text)
