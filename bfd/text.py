"""Names from outside (a file in an image folder, a path typed, a series) as a terminal should
print them, and whether this process reads them as UTF-8. Imports nothing, so that the
command's start and its error path can use it."""

from __future__ import annotations

import re
import sys
from typing import Final

# What a terminal acts on instead of showing: the C0 and C1 controls and DEL (an escape
# sequence can clear the screen or retitle the window), and the bidirectional overrides and
# isolates (they reorder what is shown after them).
_CONTROLS: Final = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED: Final[dict[str, str]] = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(control: re.Match) -> str:
    c = control[0]
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def shown(text: str) -> str:
    """A name (a series, a file) as a terminal should print it: each control character
    written as its escape (``\\n``, ``\\x1b``, ``\\u202e``) instead of acted on."""
    return _CONTROLS.sub(_escape, text)


def names_read_as_utf8() -> bool:
    """Whether this process reads file names as UTF-8 (a UTF-8 locale, or Python's UTF-8
    mode): in another encoding an image é.png is another image id (trial 31)."""
    encoding = sys.getfilesystemencoding().lower().replace("-", "").replace("_", "")
    return bool(sys.flags.utf8_mode) or encoding == "utf8"
