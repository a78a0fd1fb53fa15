"""The corpus: a manifest (csv / parquet / jsonl) or a directory / glob of videos → a columnar `Corpus`.

Video ids are stable across runs: the manifest's `video_id` column when it has one, else the video's
path relative to the source root (the manifest's folder, the directory, or the glob's fixed prefix).
Relative URIs in a manifest are resolved against the manifest's folder. Everything goes through fsspec,
so local paths and s3://, gs://, ... work alike.

A manifest is read and checked as Arrow columns, never as one Python object per row: a 1.22 M-row
manifest reads in about a second. Problems name the rows (1-based, header not counted); what a corpus
must satisfy is in corpus_checks.py.

Ids and uris are carried byte for byte to every output (the Parquet parts, the HDF5 parts, the ledger,
the failures table): any Unicode text, control characters, combining marks and ids of any length
included. Two kinds of text cannot be carried and are refused here, with the rows named: text that is
not valid UTF-8 (a lone surrogate in JSON, Latin-1 bytes in a CSV) and text holding a NUL character,
which HDF5's strings cannot hold and C libraries cut short.
"""
from __future__ import annotations

from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline import corpus_checks as checks
from pipeline.errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".3gp", ".wmv")
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    uri: str


@dataclass(frozen=True)
class Corpus:
    """The videos of a source: `table` has string columns `video_id` (unique) and `uri`, in source order."""

    source: str
    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> pa.ChunkedArray:
        return self.table.column("video_id")

    def select(self, mask: pa.ChunkedArray | pa.Array) -> "Corpus":
        """The videos where boolean `mask` is true, in the same order."""
        return Corpus(self.source, self.table.filter(mask))

    def records(self) -> list[VideoRecord]:
        """One VideoRecord per video (for small corpora and tests; a big corpus stays columnar)."""
        return [VideoRecord(v, u) for v, u in zip(self.ids.to_pylist(), self.table.column("uri").to_pylist())]


def read_corpus(source: str) -> list[VideoRecord]:
    """All videos of `source` (manifest file, directory or glob), in a stable order."""
    return load_corpus(source).records()


def load_corpus(source: str) -> Corpus:
    """The videos of `source` as columns (see Corpus); raises ConfigError naming the bad rows."""
    fs, path = url_to_fs(source)
    is_manifest = source.lower().endswith(MANIFEST_EXTENSIONS) and fs.isfile(path)
    if is_manifest:
        table = _read_manifest(source)
    elif fs.isdir(path):
        table = _list_videos(source, fs.find(path), root=path)
    elif any(ch in path for ch in "*?["):
        root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        table = _list_videos(source, fs.glob(path), root=root)
    else:
        raise ConfigError(f"source {source!r} is neither a manifest ({', '.join(MANIFEST_EXTENSIONS)}), "
                          f"a directory nor a glob that exists")
    if table.num_rows == 0:
        raise ConfigError(f"source {source!r} holds no video (video files end in {', '.join(VIDEO_EXTENSIONS)})")
    checks.check_unique(table, source)
    checks.check_no_nul(table, source)
    checks.warn_shared_uris(table, source, resolve_links=not is_manifest and isinstance(fs, LocalFileSystem))
    return Corpus(source, table)


def _read_manifest(source: str) -> pa.Table:
    table = _read_table(source)
    checks.check_columns(table, source)
    if "uri" not in table.column_names:
        raise ConfigError(f"manifest {source} has no 'uri' column (columns: {table.column_names})")
    uris = _strings(table, "uri", source)
    checks.check_present(uris, source)
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    relative = pc.invert(pc.or_(pc.match_substring(uris, "://"), pc.starts_with(uris, "/")))
    resolved = pc.if_else(relative, pc.binary_join_element_wise(pa.scalar(base), uris, "/"), uris)
    derived = relative_ids(resolved, base)
    if "video_id" in table.column_names:
        given = _strings(table, "video_id", source)
        checks.warn_missing_ids(given, source)
        ids = pc.if_else(pc.fill_null(pc.greater(pc.utf8_length(given), 0), False), given, derived)
    else:
        ids = derived
    return pa.table({"video_id": ids, "uri": resolved})


def _read_table(source: str) -> pa.Table:
    """The manifest file as an Arrow table; a file that cannot be parsed is a ConfigError saying where."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    lower = source.lower()
    try:
        with fsspec.open(source, "rb") as fh:
            if lower.endswith(".parquet"):
                return pq.read_table(fh)
            if lower.endswith(".csv"):
                return pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(
                    column_types={"video_id": pa.string(), "uri": pa.string()}))
            return pajson.read_json(fh)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        where = _first_bad_row(source) if lower.endswith((".csv", ".jsonl", ".json")) else None
        at = f" (first bad row: {where}, 1-based, header not counted)" if where else ""
        raise ConfigError(f"manifest {source} cannot be read{at}: {exc}") from None


def _first_bad_row(source: str) -> int | None:
    """The first data row of a CSV / JSON-lines manifest that does not parse (a CSV row with another
    number of fields than the header, a line that is not a JSON object, text that is not valid UTF-8);
    None if none is found."""
    import csv
    import json

    with fsspec.open(source, "r", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        if source.lower().endswith(".csv"):
            rows = csv.reader(fh)
            width = len(next(rows, []))
            return next((i for i, row in enumerate(rows, 1)
                         if row and (len(row) != width or not checks.utf8(",".join(row)))), None)
        for i, line in enumerate((line for line in fh if line.strip()), 1):
            try:
                if not isinstance(obj := json.loads(line), dict) or not checks.utf8(json.dumps(obj, ensure_ascii=False)):
                    return i
            except ValueError:
                return i
    return None


def _strings(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    column = table.column(name)
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"manifest {source}: column {name!r} of type {column.type} does not hold "
                          f"text: {exc}") from None


def relative_ids(uris: pa.ChunkedArray | pa.Array, root: str) -> pa.ChunkedArray:
    """Each URI relative to `root` when under it (with or without the protocol), else the URI itself."""
    result = uris
    prefixes = {root.rstrip("/") + "/", root.split("://", 1)[-1].rstrip("/") + "/"}
    for candidate in (uris, _strip_protocol(uris)):
        for prefix in prefixes:
            under = pc.fill_null(pc.starts_with(candidate, prefix), False)
            stripped = pc.utf8_slice_codeunits(candidate, len(prefix))
            result = pc.if_else(pc.and_(under, pc.equal(result, uris)), stripped, result)
    return result if isinstance(result, pa.ChunkedArray) else pa.chunked_array([result])


def _strip_protocol(uris):
    return pc.replace_substring_regex(uris, r"^[A-Za-z][A-Za-z0-9+.-]*://", "")


def _list_videos(source: str, paths, root: str) -> pa.Table:
    protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
    videos = sorted(p for p in paths if p.lower().endswith(VIDEO_EXTENSIONS))
    ids = relative_ids(pa.array(videos, pa.string()), root).to_pylist()
    kept = [(vid, protocol + p) for vid, p in zip(ids, videos) if not _hidden(vid)]
    return pa.table({"video_id": pa.array([k[0] for k in kept], pa.string()),
                     "uri": pa.array([k[1] for k in kept], pa.string())})


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/") if part)


