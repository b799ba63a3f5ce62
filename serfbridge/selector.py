"""Kubernetes equality-based label selectors: ``k=v,k!=v,k,!k``, parsed and matched.

A codec at the bottom of the package: ``config_rules`` checks ``--selector`` with it at
start, and ``plan_publish`` filters Services with it on every pass, so both agree on what
a selector means. Set-based terms (``k in (a,b)``) are refused, not half-understood.

Pure: strings in, data out. Must not import the planners or anything with I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from serfbridge.errors import ConfigError

_TERM = re.compile(r"\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*))?\s*")


def parse_selector(selector: str) -> list[tuple[str, str, str]]:
    """``k=v,k!=v,k,!k`` -> [(op, key, value)]; ConfigError for anything else."""
    terms = []
    for raw in filter(None, (t.strip() for t in selector.split(","))):
        match = _TERM.fullmatch(raw)
        if match is None or (match[1] and match[3]):
            raise ConfigError(f"unsupported label selector term {raw!r} (use k=v, k!=v, k, !k)")
        bang, key, op, value = match.groups()
        terms.append((_op(bang=bang, op=op), key, value or ""))
    return terms


def _op(*, bang: str, op: str | None) -> str:
    if bang:
        return "!"
    return op.replace("==", "=") if op else "exists"


def selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    """True when ``labels`` satisfy every term of ``selector`` (an empty one matches all)."""
    for op, key, value in parse_selector(selector):
        if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value):
            return False
        if (op == "exists" and key not in labels) or (op == "!" and key in labels):
            return False
    return True
