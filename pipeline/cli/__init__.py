"""The command line: `vidfeat` (also `python -m pipeline`, and `python -m jobs.extract` for Ray jobs).

`entry` builds the parser and runs a command (`main` returns its exit code, `run_cli` is the process
entry point; the table of exit codes is its docstring); `commands` holds the commands and their arguments,
`preflight` is `vidfeat plan` (what a run of a corpus will cost, before it starts); `console` and
`progress` are what a run prints, `exits` how a command ends (one code per meaning, one line), and
`supervise` the watched child that `extract` and `demo` run in.

May import: every role package and the core modules. Nothing imports the command line: a run reports
through a listener (`pipeline.run.listener.RunListener`) that the console supplies.
Names are loaded on first use (PEP 562): a module of the package imports the others only as it needs them.
"""
from __future__ import annotations

import importlib

_WHERE = {"build_parser": "entry", "main": "entry", "run_cli": "entry", "require_output": "commands"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
