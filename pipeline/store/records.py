"""Ledger records: naming, parsing and checking them; index and claim file names.

A record is one JSON object (see ledger_state.py for its two kinds), stamped with the epoch of the writer
that published it (claims.py says which records count). A record that cannot be parsed, or is not a
record, is damage: it is named (DamagedOutputError, exit 2) and nothing is deleted, by readers and
writers alike. Records written before epochs existed count as epoch 0, and indexes named
`index-<gen>.parquet` as epoch 0 generation `gen`; newer indexes are `index-<epoch>-<seq>.parquet`, so the
newest index is always the newest writer's.
"""
from __future__ import annotations

import json
import re

from pipeline.errors import DamagedOutputError

_INDEX = re.compile(r"^index-(\d{8})(?:-(\d{8}))?\.parquet$")
_FAILURE_KEYS = ("video_id", "uri", "stage", "error")


def index_name(epoch: int, seq: int) -> str:
    return f"index-{epoch:08d}-{seq:08d}.parquet"


def index_key(name: str) -> tuple[int, int] | None:
    """`index-<epoch>-<seq>.parquet` → (epoch, seq); the old `index-<gen>.parquet` → (0, gen); else None."""
    m = _INDEX.match(name)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2))) if m.group(2) else (0, int(m.group(1)))


def claim_name(epoch: int) -> str:
    return f"{epoch:08d}.json"


def epoch_of(record: dict) -> int:
    return int(record.get("epoch", 0))


def parse(data: bytes, where: str) -> dict:
    """A record's bytes → the record, checked; DamagedOutputError naming `where` otherwise."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(where, f"it is not JSON ({len(data)} bytes; {exc})") from None
    problem = _problem(record, where.rsplit("/", 1)[-1].removesuffix(".json"))
    if problem:
        raise damaged(where, problem)
    return record


def damaged(where: str, why: str) -> DamagedOutputError:
    return DamagedOutputError(
        f"ledger record {where} cannot be used: {why}. Nothing was deleted. Restore it from a copy, or, if it "
        f"is not a vidfeat record, move it out of the output directory; then run the command again")


def _problem(record, stem: str) -> str | None:
    if not isinstance(record, dict):
        return f"it holds a {type(record).__name__}, not a record"
    if record.get("part") != stem:
        return f"its 'part' is {record.get('part')!r}, not {stem!r} (the file's name)"
    if not isinstance(record.get("committed_at"), (int, float)) or not isinstance(record.get("epoch", 0), int) \
            or not isinstance(record.get("seq", 0), int):
        return "its 'committed_at', 'epoch' or 'seq' is missing or not a number"
    if record.get("kind") == "compaction":
        return _strings(record, ("segments", "replaces")) or _strings(record, ("retired",), optional=True)
    if "kind" in record:
        return f"its kind {record['kind']!r} is unknown"
    problem = _strings(record, ("done",)) or _strings(record, ("uris",), optional=True)
    if not problem and len(record.get("uris", record["done"])) != len(record["done"]):
        problem = "its 'uris' and 'done' differ in length"
    return problem or _failures(record.get("failed", []))


def _strings(record: dict, keys: tuple[str, ...], optional: bool = False) -> str | None:
    for key in keys:
        if optional and key not in record:
            continue
        value = record.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"its {key!r} is not a list of strings"
    return None


def _failures(failed) -> str | None:
    if not isinstance(failed, list) or not all(
            isinstance(f, dict) and all(k in f for k in _FAILURE_KEYS) for f in failed):
        return f"its 'failed' is not a list of {{{', '.join(_FAILURE_KEYS)}}} objects"
    return None
