"""Text that reaches a terminal: untrusted values (posts, captions, file names) made safe to print.

Control and format characters (ANSI escapes, bidi overrides, NULs) are printed as visible
escapes, so a post cannot move the cursor, recolour the screen or hide text.
"""

from __future__ import annotations

import textwrap
import unicodedata
from typing import Any


def printable(value: Any, width: int = 100) -> str:
    """One terminal-safe line: control/format characters escaped, long text shortened."""
    text = "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch).startswith("C") else ch for ch in str(value))
    return textwrap.shorten(text, width=width, placeholder="…") if text.strip() else text
