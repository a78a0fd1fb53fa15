"""Precision and recall of `vidfeat dedup` on planted duplicates, and how the threshold trades them.

    python benchmarks/dedup_quality.py [--seconds 4] [--thresholds 0.0005 0.001 0.002 0.005 0.01 0.02 0.05]

The planted set (pipeline/synthetic/duplicates.py): 4 base videos from the demo's sources, each written as
original, re-encoded (crf 40), resized (3/4), trimmed (first second cut) and watermarked, plus each
base's demo partner (another stretch of the same source: similar, not a duplicate) — 24 videos. They
are embedded by the random-weight `tiny` preset in this process (tests/featurekit.py: the pipeline's
own decode, inference and aggregation, without Ray), committed, and `dedup` runs at each threshold.
Reported per threshold: pair precision and recall over the 40 true pairs, the recall of each variant
(its pair with the original found), and how many partners were grouped with a family.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import pyarrow.parquet as pq  # noqa: E402

from featurekit import extract_video, tiny_config  # noqa: E402
from pipeline.index.dedup import dedup  # noqa: E402
from pipeline.synthetic.duplicates import VARIANTS, pair_quality, write_duplicate_set  # noqa: E402
from pipeline.run.infer import ClipEmbedder  # noqa: E402
from pipeline.store.commit import provenance, write_part  # noqa: E402
from pipeline.store.ledger import Ledger  # noqa: E402


def committed_output(root: str, seconds: float) -> tuple[str, list]:
    planted = write_duplicate_set(os.path.join(root, "videos"), seconds)
    config = tiny_config()
    embedder, prov = ClipEmbedder(config.to_dict()), provenance(config, "sha", "fp", "bench")
    events = [extract_video(os.path.basename(p.path)[:-4], p.path, config, embedder) for p in planted]
    out = os.path.join(root, "out")
    rows = [{**video, **prov} for video, _ in events]
    write_part(Ledger(out), "part-0", rows, {v["video_id"]: clips for v, clips in events}, [], prov)
    Ledger(out).record("part-0", [v["video_id"] for v in rows], [], uris=[v["uri"] for v in rows])
    return out, planted


def measure(out: str, planted: list, threshold: float) -> dict:
    report = dedup(out, threshold)
    table = pq.read_table(report.table)
    group_of = dict(zip(table.column("video_id").to_pylist(), table.column("group").to_pylist()))
    name = {p: os.path.basename(p.path)[:-4] for p in planted}
    precision, recall = pair_quality(group_of, {name[p]: p.family for p in planted})
    original = {p.family: name[p] for p in planted if p.variant == "original"}
    found = {v: sum(name[p] in group_of and group_of[name[p]] == group_of.get(original[p.family])
                    for p in planted if p.variant == v) for v in VARIANTS[1:]}
    partners = sum(name[p] in group_of for p in planted if p.variant == "partner")
    return {"threshold": threshold, "precision": round(precision, 3), "recall": round(recall, 3),
            "variant_found_of_4": found, "partners_grouped_of_4": partners, "groups": report.groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        out, planted = committed_output(root, args.seconds)
        rows = [measure(out, planted, t) for t in args.thresholds]
    print(json.dumps({"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, "
                      f"{os.cpu_count()} CPUs", "videos": len(planted), "seconds": args.seconds,
                      "thresholds": rows}, indent=2))


if __name__ == "__main__":
    main()
