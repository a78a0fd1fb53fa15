"""vidfeat command line: extract | status | verify | inspect | search | demo (contract: DESIGN.md §4).

Exit codes: 0 success; 1 the run finished but some videos failed; 2 bad usage or configuration;
3 the run was stopped (failure rate over --max-failure-rate, or an unrecoverable error).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline.errors import VidfeatError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3


def cmd_demo(args: argparse.Namespace) -> int:
    """Smoke run of the model: random `tiny` weights on one random clip."""
    import torch

    from pipeline.model import load_timesformer

    model = load_timesformer("random", preset=args.preset)
    arch = model.arch
    x = torch.randn(1, 3, arch["num_frames"], arch["img_size"], arch["img_size"])
    with torch.inference_mode():
        emb = model.forward_features(x)
        logits = model.forward_head(emb)
    print(json.dumps({"note": f"RANDOM weights, preset {args.preset!r}: numbers are meaningless",
                      "embedding_dim": emb.shape[1], "num_classes": logits.shape[1],
                      "embedding_head": [round(v, 4) for v in emb[0, :4].tolist()]}))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vidfeat", description="Long-video TimeSformer features on Ray.")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run on sample videos it generates (random tiny model)")
    demo.add_argument("--preset", default="tiny")
    demo.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except VidfeatError as exc:
        print(f"vidfeat {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
