"""`ray job submit --working-dir . -- python -m jobs.extract SOURCE --out OUT --config jobs/howto100m_l.yaml`

Takes exactly the arguments of `vidfeat extract`. Inside a Ray job, RAY_ADDRESS is set, so the run
joins the cluster the job was submitted to.
"""
from __future__ import annotations

import sys

from pipeline.cli import main, run_cli


def run(argv: list[str] | None = None) -> int:
    """The exit code of `vidfeat extract ARGV` (default: this process's arguments), run in this process."""
    return main(["extract", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    run_cli(["extract", *sys.argv[1:]])         # leaves with the code (pipeline.cli.exits.exit_now)
