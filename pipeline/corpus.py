"""The corpus: a manifest (csv / parquet / jsonl) or a directory / glob of videos → VideoRecords.

Video ids are stable across runs: the manifest's `video_id` column when it has one, else the video's
path relative to the source root (the manifest's folder, the directory, or the glob's fixed prefix).
Relative URIs in a manifest are resolved against the manifest's folder. Duplicate ids are an error
that names them. Everything goes through fsspec, so local paths and s3://, gs://, ... work alike.
"""
from __future__ import annotations

import collections
import posixpath
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".3gp", ".wmv")
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    uri: str


def read_corpus(source: str) -> list[VideoRecord]:
    """All videos of `source` (manifest file, directory or glob), in a stable order."""
    fs, path = url_to_fs(source)
    if source.lower().endswith(MANIFEST_EXTENSIONS) and fs.isfile(path):
        records = _read_manifest(source)
    elif fs.isdir(path):
        records = _list_videos(fs, source, fs.find(path), root=path)
    elif any(ch in path for ch in "*?["):
        root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        records = _list_videos(fs, source, fs.glob(path), root=root)
    else:
        raise ConfigError(f"source {source!r} is neither a manifest ({', '.join(MANIFEST_EXTENSIONS)}), "
                          f"a directory nor a glob that exists")
    _check_unique(records, source)
    return records


def _read_manifest(source: str) -> list[VideoRecord]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    with fsspec.open(source, "rb") as fh:
        if source.lower().endswith(".parquet"):
            table = pq.read_table(fh)
        elif source.lower().endswith(".csv"):
            table = pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(
                column_types={"video_id": pa.string(), "uri": pa.string()}))
        else:
            table = pajson.read_json(fh)
    if "uri" not in table.column_names:
        raise ConfigError(f"manifest {source} has no 'uri' column (columns: {table.column_names})")
    uris = [str(u) for u in table.column("uri").to_pylist()]
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    resolved = [u if ("://" in u or u.startswith("/")) else posixpath.join(base, u) for u in uris]
    if "video_id" in table.column_names:
        ids = [str(v) if v is not None else None for v in table.column("video_id").to_pylist()]
    else:
        ids = [None] * len(uris)
    return [VideoRecord(vid if vid else _relative_id(uri, base), uri) for vid, uri in zip(ids, resolved)]


def _list_videos(fs, source: str, paths, root: str) -> list[VideoRecord]:
    protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
    videos = sorted(p for p in paths if p.lower().endswith(VIDEO_EXTENSIONS))
    records = [VideoRecord(_relative_id(p, root), protocol + p if protocol else p) for p in videos]
    return [r for r in records if not _hidden(r.video_id)]


def _relative_id(uri: str, root: str) -> str:
    """`uri` relative to `root` when under it, else the URI itself."""
    root = root.rstrip("/") + "/"
    for candidate in (uri, uri.split("://", 1)[-1]):
        if candidate.startswith(root):
            return candidate[len(root):]
        stripped = root.split("://", 1)[-1]
        if candidate.startswith(stripped):
            return candidate[len(stripped):]
    return uri


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/") if part)


def _check_unique(records: list[VideoRecord], source: str) -> None:
    counts = collections.Counter(r.video_id for r in records)
    dupes = sorted(vid for vid, n in counts.items() if n > 1)
    if dupes:
        shown = ", ".join(repr(d) for d in dupes[:10]) + (f" and {len(dupes) - 10} more" if len(dupes) > 10 else "")
        raise ConfigError(f"duplicate video ids in {source}: {shown}")
