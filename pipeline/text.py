"""Text that came from data (video ids, uris, paths, error messages), made safe to print on a terminal.

A file named `\\x1b[2J\\x1b]0;title\\x07.mp4` must not clear the screen or retitle the window when a
summary names it, an id holding a newline must not split one failure over two lines, and a bidi
override (U+202E) must not reverse what follows it. `printable` shows such characters as visible
escapes and leaves every other character as it is (accents, CJK, combining marks, emoji sequences).
Backslashes are left as they are, so `\\x1b` in the output may also be those four characters in the
data; `--json` output is exact.
"""
from __future__ import annotations

import unicodedata

_UNSAFE = {"Cc", "Cs", "Zl", "Zp", "Cf"}     # C0, DEL, C1; lone surrogates; line/paragraph separators; format
_KEPT_FORMAT = {"\u200c", "\u200d"}           # zero-width (non-)joiners: part of emoji sequences and scripts
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: object) -> str:
    """`text` (any object: str() of it) with control, bidi and other invisible format characters
    written as escapes: '\\x1b', '\\n', '\\u202e', '\\udcff' (a byte of a non-UTF-8 file name)."""
    text = str(text)
    if text.isprintable():                    # the common case: nothing to look at
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


def _unsafe(c: str) -> bool:
    if unicodedata.category(c) not in _UNSAFE:
        return False
    return c not in _KEPT_FORMAT and not "\U000e0020" <= c <= "\U000e007f"   # tags: subdivision flags


def _escape(c: str) -> str:
    code = ord(c)
    if c in _SHORT:
        return _SHORT[c]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
