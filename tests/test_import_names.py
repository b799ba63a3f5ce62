"""dns1035: valid Service names for any text, stable, distinct for distinct texts."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfbridge.import_names import dns1035

DNS1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def hashed(text: str, cleaned: str) -> str:
    return f"{cleaned[:54]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("syncthing", "syncthing", id="valid-kept"),
        pytest.param("Docker", hashed("Docker", "docker"), id="uppercase-hashed"),
        pytest.param("web_ui", hashed("web_ui", "web-ui"), id="underscore"),
        pytest.param("8080", hashed("8080", "x-8080"), id="digit-first"),
        pytest.param("", hashed("", "x-"), id="empty"),
        pytest.param("a--b", hashed("a--b", "a-b"), id="dash-runs-collapse"),
        pytest.param("-a-", hashed("-a-", "a"), id="dashes-stripped"),
        pytest.param("a" * 63, "a" * 63, id="63-kept"),
        pytest.param("a" * 64, hashed("a" * 64, "a" * 64), id="64-cut"),
        pytest.param("lab-default-web", "lab-default-web", id="other-cluster-service"),
    ],
)
def test_dns1035_table(text: str, expected: str) -> None:
    assert dns1035(text) == expected


@given(st.text())
def test_dns1035_is_always_a_valid_label(text: str) -> None:
    name = dns1035(text)
    assert DNS1035.fullmatch(name), name
    assert dns1035(text) == name


@given(st.text(), st.text())
def test_dns1035_distinct_texts_get_distinct_names(a: str, b: str) -> None:
    if a != b:
        assert dns1035(a) != dns1035(b)


@given(st.from_regex(DNS1035, fullmatch=True).filter(lambda t: "--" not in t))
def test_dns1035_keeps_valid_names(text: str) -> None:
    """A valid name is kept, except one with a dash run: the rule collapses those, and a
    changed name gets its hash ("a--b" in the table above)."""
    assert dns1035(text) == text
