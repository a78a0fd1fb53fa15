"""What a corpus must satisfy, checked as Arrow columns, with the offending rows named (1-based, header
not counted): every row has a uri; ids are unique; no NUL in an id or uri (HDF5 strings end at one)
and only valid UTF-8; an id column holds text or integers (a float column would turn 1.0 into "1" and
NaN into "nan"); a name appears once among the columns. Warned about, not refused: rows of a manifest
with a video_id column that give none (their id is derived from the path), and one file listed under
several ids or several spellings (`./x.mp4` and `x.mp4`, `file:///p` and `/p`, a symlink and its target),
which would be extracted once per id.
"""
from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

SHOWN = 10                                            # rows named in one error message


def check_columns(table: pa.Table, source: str) -> None:
    """Refuse a manifest whose `uri` or `video_id` column appears twice, or whose ids are not text or integers."""
    for name in ("uri", "video_id"):
        if table.column_names.count(name) > 1:
            raise ConfigError(f"manifest {source} has {table.column_names.count(name)} columns named {name!r}: "
                              f"keep one")
    if "video_id" in table.column_names:
        kind = table.schema.field("video_id").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_null(kind) or pa.types.is_dictionary(kind)):
            raise ConfigError(f"manifest {source}: its video_id column holds {kind}, not text: ids would change "
                              f"(1.0 would become '1', NaN 'nan'); write the ids as text")


def warn_missing_ids(given: pa.ChunkedArray, source: str) -> None:
    rows = rows_where(pc.invert(pc.fill_null(pc.greater(pc.utf8_length(given), 0), False)))
    if rows and len(rows) < len(given):
        log.warning("manifest %s: %d row(s) give no video_id and get their path as id: rows %s", source,
                    len(rows), shown(rows))


def check_present(uris: pa.ChunkedArray, source: str) -> None:
    bad = pc.or_(pc.is_null(uris), pc.equal(pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(uris)), 0), 0))
    rows = rows_where(bad)
    if rows:
        raise ConfigError(f"manifest {source}: {len(rows)} row(s) have no uri: rows {shown(rows)} "
                          f"(1-based, header not counted)")


def check_unique(table: pa.Table, source: str) -> None:
    ids = table.column("video_id")
    dupes = _repeated(ids)
    if len(dupes) == 0:
        return
    named = [f"{vid!r} (rows {shown(rows_where(pc.equal(ids, vid)))})" for vid in dupes.to_pylist()[:SHOWN]]
    more = f" and {len(dupes) - SHOWN} more" if len(dupes) > SHOWN else ""
    raise ConfigError(f"duplicate video ids in {source}: {', '.join(named)}{more} (rows 1-based, header not "
                      f"counted)")


def warn_shared_uris(table: pa.Table, source: str, resolve_links: bool = False) -> None:
    """Warn when one file is listed under several ids (it would be extracted once per id), however its
    uri is spelled (see `canonical`)."""
    keys = canonical(table.column("uri"), resolve_links)
    shared = _repeated(keys)
    if len(shared) == 0:
        return
    named = []
    for key in shared.to_pylist()[:SHOWN]:
        rows = rows_where(pc.equal(keys, key))
        ids = table.column("video_id").take(pa.array([r - 1 for r in rows[:SHOWN]])).to_pylist()
        named.append(f"{key!r} as {', '.join(map(repr, ids))} (rows {shown(rows)})")
    more = f" and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
    log.warning("%s lists %d file(s) under several ids, each extracted once per id: %s%s", source, len(shared),
                "; ".join(named), more)


def _repeated(values: pa.ChunkedArray) -> pa.Array:
    """The values that occur more than once."""
    counts = pc.value_counts(values)
    return counts.filter(pc.greater(counts.field("counts"), 1)).field("values")


def check_no_nul(table: pa.Table, source: str) -> None:
    for name in ("video_id", "uri"):
        rows = rows_where(pc.match_substring(table.column(name), "\x00"))
        if rows:
            raise ConfigError(f"manifest {source}: {len(rows)} row(s) have a NUL character in their {name}, which "
                              f"cannot be stored exactly (HDF5 strings end at a NUL): rows {shown(rows)} "
                              f"(1-based, header not counted)")


def canonical(uris: pa.ChunkedArray, resolve_links: bool = False) -> pa.ChunkedArray:
    """One spelling per file: `file://` dropped, `./` segments and repeated slashes folded; with
    `resolve_links` (local directory scans) symlinks resolved too."""
    text = pc.replace_substring_regex(uris, r"^file://", "")
    text = pc.replace_substring_regex(text, r"(^|/)(\./)+", r"\1")
    text = pc.replace_substring_regex(text, r"([^:/])/{2,}", r"\1/")
    if resolve_links:
        text = pa.chunked_array([pa.array([os.path.realpath(p) for p in text.to_pylist()], pa.string())])
    return text


def rows_where(mask) -> list[int]:
    """1-based positions where boolean `mask` is true."""
    return [i + 1 for i in pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()]


def shown(rows: list[int]) -> str:
    text = ", ".join(map(str, rows[:SHOWN]))
    return text + (f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else "")


def utf8(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogates, no undecodable bytes)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
