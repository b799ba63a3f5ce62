"""Text from gossip made safe to show: escaped for terminals, valid for strict JSON parsers.

Member names, tag values and ``services`` fields are whatever a peer gossips: newlines
that forge table rows, ESC sequences that rewrite the terminal, bidi controls that reorder
what is read, and undecodable bytes (the RPC layer keeps them as lone surrogates,
``surrogateescape``). Callers: the ``members`` and ``services`` tables and JSON output
(``cli/serf.py``, ``cli/services.py``, ``cloudy.search_json``).

Pure string functions; must not change ordinary text (the avahi-ps drop-in format).
"""

from __future__ import annotations

import re

#: Bidirectional formatting characters (Unicode's Bidi_Control property): they reorder
#: the text around them, so a value can display as something it is not.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 and C1 controls, DEL, line/paragraph separators, bidi controls, lone surrogates.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # surrogateescape's stand-ins for bytes 0x80-0xFF
_ONE_BYTE = 0x100  # below it a code point prints as \xHH, above as \uHHHH


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate (an undecodable byte) as U+FFFD: always UTF-8."""
    return _SURROGATES.sub("\ufffd", text)


def escape_controls(text: str, *, by_name: bool = True) -> str:
    """``text`` for one terminal cell (or one log line): unsafe characters become visible
    escapes.

    ``\\n``, ``\\r``, ``\\t`` by name (``\\x0a`` ... with ``by_name=False``, as logs spell
    them); an undecodable byte as ``\\xNN`` (the byte it was); other controls as ``\\xNN``
    or ``\\uNNNN``. Everything else is unchanged.
    """
    return _UNSAFE.sub(_escape_named if by_name else _escape_one, text)


def _escape_named(match: re.Match[str]) -> str:
    return _NAMED.get(match.group()) or _escape_one(match)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code in _ESCAPED_BYTES:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < _ONE_BYTE else f"\\u{code:04x}"
