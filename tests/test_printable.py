"""Hypothesis: gossip text made safe for terminals and strict JSON parsers (printable.py)."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge.printable import BIDI_CONTROLS, escape_controls, valid_text

# What the RPC layer can hand us: any code point, lone surrogates included.
anything = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60)
ordinary = st.text(
    st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="\u2028\u2029"),
    max_size=60,
)


def unsafe(char: str) -> bool:
    category = unicodedata.category(char)
    return category in ("Cc", "Cs", "Zl", "Zp") or char in BIDI_CONTROLS


@settings(max_examples=500)
@given(anything)
def test_escaped_text_has_no_unsafe_character_and_is_utf8(text: str) -> None:
    escaped = escape_controls(text)
    assert not any(unsafe(c) for c in escaped)
    escaped.encode("utf-8")
    assert escaped.count("\n") == 0


@settings(max_examples=500)
@given(anything)
def test_valid_text_always_encodes_and_parses_strictly(text: str) -> None:
    clean = valid_text(text)
    line = json.dumps(clean, ensure_ascii=False)
    assert json.loads(line.encode("utf-8").decode("utf-8")) == clean
    assert len(clean) == len(text)  # one U+FFFD per undecodable byte, nothing else changes


@given(ordinary)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert escape_controls(text) == text and valid_text(text) == text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param("a\nb", "a\\nb", id="newline"),
        pytest.param("\x1b[31m", "\\x1b[31m", id="esc"),
        pytest.param("\x00", "\\x00", id="nul"),
        pytest.param("x\udcff", "x\\xff", id="undecodable-byte"),
        pytest.param("\u202eabc", "\\u202eabc", id="rlo"),
        pytest.param("\x85", "\\x85", id="c1-next-line"),
    ],
)
def test_escapes_are_readable(raw: str, shown: str) -> None:
    assert escape_controls(raw) == shown
