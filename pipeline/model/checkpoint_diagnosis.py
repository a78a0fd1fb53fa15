"""Why a checkpoint file cannot be loaded, said for the person who gave it: empty, truncated (a zip
whose directory is missing, a legacy file that ends early), not a checkpoint at all (text, an HTML page,
a Git LFS pointer, another zip), or a pickle that would run or build Python objects — named by the
globals it imports (read from its opcodes, never executed), and never with torch's advice to load it
with weights_only=False.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from typing import Any, Iterator, Mapping

SHOWN = 10          # keys named per kind of problem; the rest are counted
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)    # first bytes of a torch < 1.6 file
_ZIP_MAGIC = b"PK\x03\x04"                                           # torch ≥ 1.6 files are zip archives
_REFUSED = (                    # torch's words (2.4 … 2.14) for a pickle that names more than tensors
    re.compile(r"GLOBAL (\S+) was not an allowed global"),                     # not on the allowlist
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),       # os, posix, subprocess, ...
    re.compile(r"reduce for unrecognized function (.+?)(?: which belongs to .*)?$", re.M),
    re.compile(r"Can only (?:create new object|build) .*? but got (.+?)$", re.M),
)
_ADVICE = re.compile(r"weights_only|safe_globals|Check the documentation|Please file an issue|"
                     r"do those steps only|trusted source", re.I)
_PICKLES_PER_FILE = 5           # a legacy torch file is 5 pickles in a row, then raw storage bytes
_MAX_PICKLE_SCAN = 64 << 20     # a zip member data.pkl larger than this is not scanned for names


def diagnose(source: str, exc: BaseException, local: str | None = None) -> str:
    """Why `source` (read from `local`) did not load, in words a person can act on: refused (a pickle that
    would run or build Python objects: the globals it names), empty, truncated or damaged, or not a
    checkpoint (text, another zip, other bytes). torch's own advice is never quoted: it suggests
    weights_only=False, which would run the file's code."""
    path = local or source
    size, head = _size_and_head(path)
    if size == 0:
        return f"{source} is empty (0 bytes), not a checkpoint: an interrupted download or copy?"
    if size < 0:
        return f"{source} is not a readable torch checkpoint ({_torch_detail(exc)})"
    refused = _refused_globals(exc, path)
    if refused:
        named = some(refused, sep=", ")
        return (f"{source} is refused: it is a pickle that would run or build Python objects ({named}); "
                "vidfeat loads checkpoints with weights_only=True and accepts only tensors and plain containers: "
                "re-save it as a plain state dict (torch.save(model.state_dict(), path)) in a trusted environment")
    detail = _torch_detail(exc)
    if head.startswith(_ZIP_MAGIC):
        return _zip_failure(source, path, size, detail, exc)
    if head.startswith(_LEGACY_MAGIC) or (len(head) < len(_LEGACY_MAGIC) and _LEGACY_MAGIC.startswith(head)):
        how = "truncated: its data ends early" if _ends_early(exc) else "damaged"
        return f"{source} is {how} (a torch checkpoint in the legacy format, {size:,} bytes; {detail})"
    text = _text_start(head)
    if text is not None:
        return f"{source} is not a torch checkpoint: it is text, beginning {text!r}{_text_hint(text)}"
    if _pickle_protocol(head) in (2, 3, 4, 5):
        return (f"{source} is not a torch checkpoint: a Python pickle (protocol {head[1]}) that holds no tensors "
                f"torch can read safely ({detail})")
    return f"{source} is not a torch checkpoint (it begins with bytes {head[:8].hex(' ')}; {detail})"


def _zip_failure(source: str, path: str, size: int, detail: str, exc: BaseException) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            protocol = _pickle_protocol(archive.open(pickles[0]).read(2)) if pickles else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return (f"{source} is truncated or damaged: it starts as a zip archive (the torch checkpoint format) but its "
                f"zip directory, at the end of the file, is missing ({size:,} bytes): an interrupted download or copy?")
    if not pickles:
        return f"{source} is a zip archive, not a torch checkpoint (it holds {preview(names)})"
    if isinstance(exc, pickle.UnpicklingError) and protocol not in (None, 2):
        return (f"{source} is a torch checkpoint saved with pickle protocol {protocol}, which torch's safe loader "
                f"cannot read ({detail}): re-save it with torch.save's default protocol (2)")
    return f"{source} is a damaged torch checkpoint ({size:,} bytes; {detail})"


def _pickle_protocol(start: bytes) -> int | None:
    return start[1] if len(start) > 1 and start[0] == 0x80 else None


def _refused_globals(exc: BaseException, path: str) -> list[str]:
    """The Python objects a refused pickle names: from torch's message, then from reading the pickle's
    opcodes ourselves (torch ≤ 2.14 only says "Unsupported operand" for protocol 4/5 pickles)."""
    text = str(exc)
    names = [m.group(1).strip() for pattern in _REFUSED for m in pattern.finditer(text)]
    names = [n if "." in n or n.startswith("<") else f"builtins.{n}" for n in names]   # torch drops "builtins."
    if names or isinstance(exc, pickle.UnpicklingError):
        names += _unsafe(_pickle_globals(path))
    return list(dict.fromkeys(names))


def _unsafe(names: list[str]) -> list[str]:
    """`names` less those torch's weights-only unpickler allows (tensor rebuilders, OrderedDict, ...)."""
    try:
        from torch import _weights_only_unpickler as wo                   # private: only narrows a message
        allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except Exception:                                                     # noqa: BLE001
        allowed = set()
    return [n for n in names if n not in allowed]


def _pickle_globals(path: str) -> list[str]:
    """Every `module.name` the pickles in `path` would import, read with pickletools (nothing runs): the
    `data.pkl` of a zip archive, else up to _PICKLES_PER_FILE pickles from the start of the file. Only
    pickles that read to their STOP count, so random bytes name nothing."""
    names: list[str] = []
    try:
        for stream in _pickle_streams(path):
            for _ in range(_PICKLES_PER_FILE):
                found = _globals_of_one_pickle(stream)
                if found is None:
                    break
                names += found
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        pass
    return names


def _pickle_streams(path: str) -> Iterator[Any]:
    if is_zip(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith("data.pkl") and info.file_size <= _MAX_PICKLE_SCAN:
                    yield io.BytesIO(archive.read(info))
    else:
        with open(path, "rb") as fh:
            yield fh


def _globals_of_one_pickle(stream: Any) -> list[str] | None:
    """The globals one pickle names (GLOBAL, INST, STACK_GLOBAL with its two strings), or None when the
    bytes are not one whole pickle."""
    import pickletools
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    names: list[str] = []
    memo: dict[int, Any] = {}
    pushed: list[Any] = []                                  # recent values; strings matter for STACK_GLOBAL
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                if (module, name) in NAME_MAPPING:
                    module, name = NAME_MAPPING[(module, name)]
                module = IMPORT_MAPPING.get(module, module)
                names.append(f"{module}.{name}")
                pushed.append(None)
            elif op.name == "STACK_GLOBAL":
                module, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                names.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
                pushed.append(None)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif op.stack_after:
                pushed.append(arg if isinstance(arg, str) else None)
            del pushed[:-4]
    except Exception:                                        # noqa: BLE001 - not a pickle (or not whole)
        return None
    return names


def _torch_detail(exc: BaseException) -> str:
    """torch's own reason, first sentence only, without its advice (weights_only=False, allowlists, docs)."""
    lines = [ln.strip(" \t.") for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not _ADVICE.search(ln)]
    reason = ""
    if lines:
        reason = re.split(r"(?<=[a-z)])\.\s+(?=[A-Z])", lines[0])[0]
        reason = re.sub(r"\s*\(Could this error message be improved\?.*", "", reason).strip()
    name = type(exc).__name__
    return f"{name}: {reason[:200]}" if reason else name


def _ends_early(exc: BaseException) -> bool:
    return isinstance(exc, (EOFError, IndexError)) or "unexpected EOF" in str(exc) or "truncated" in str(exc)


def _size_and_head(path: str, n: int = 512) -> tuple[int, bytes]:
    try:
        with open(path, "rb") as fh:
            return os.fstat(fh.fileno()).st_size, fh.read(n)
    except OSError:
        return -1, b""


def is_zip(path: str) -> bool:
    return _size_and_head(path, 4)[1] == _ZIP_MAGIC


def _text_start(head: bytes) -> str | None:
    """The first line of `head` when it reads as text (UTF-8, printable), else None."""
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", "ignore")
    if not text or sum(c.isprintable() or c in "\r\n\t" for c in text) < 0.97 * len(text):
        return None
    first = text.strip().splitlines()[0] if text.strip() else text
    return first[:60] + ("…" if len(first) > 60 else "")


def _text_hint(text: str) -> str:
    low = text.lower()
    if low.startswith("version https://git-lfs"):
        return " (a Git LFS pointer, not the file: fetch it with `git lfs pull`)"
    if low.startswith(("<!doctype html", "<html", "<?xml", "{")):
        return " (an error page or a response saved in place of the file?)"
    return ""


def some(items: list[str], quote: bool = False, n: int = SHOWN, sep: str = "; ") -> str:
    """At most `n` items, then how many more: "['a', 'b'] and 12 more (14 in all)" / "a; b and 12 more"."""
    shown = repr(list(items[:n])) if quote else sep.join(map(str, items[:n]))
    return shown + (f" and {len(items) - n} more ({len(items)} in all)" if len(items) > n else "")


def preview(mapping: Mapping, n: int = 6) -> str:
    keys = list(mapping)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(map(str, keys[:n])) + more
