"""Log lines carry other people's text: escaping (Hypothesis) and both formatters."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from serfbridge import logs


@given(st.text())
def test_escaped_text_is_one_line_without_controls(text: str) -> None:
    escaped = logs.escape(text)
    assert len(escaped.splitlines()) <= 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in escaped)
    assert not set(escaped) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# Lone surrogates (Cs) are not text (they cannot be written as UTF-8): escaped too.
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"))))
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert logs.escape(text) == text


def _format(formatter: logging.Formatter, message: str, *args: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


FORGED = "n2\n2026-12-02 13:00:00,000 INFO serfbridge.daemon: forged\x1b[2J\u202e"


def test_a_member_name_cannot_forge_a_text_line() -> None:
    out = _format(logs.TextFormatter("%(levelname)s %(message)s"), "member %s joined", FORGED)
    assert out == (
        "WARNING member n2\\x0a2026-12-02 13:00:00,000 INFO serfbridge.daemon: "
        "forged\\x1b[2J\\u202e joined\n"
    )


def test_json_lines_escape_too() -> None:
    out = _format(logs.JsonFormatter(), "member %s joined", FORGED)
    assert out.count("\n") == 1 and "\u202e" not in out
    assert json.loads(out)["msg"].startswith("member n2\\x0a2026")
