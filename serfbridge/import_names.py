"""Kubernetes names for imported Cloudy services: ``dns1035``, pure, total, deterministic.

Role: turn a Cloudy type (``syncthing``, ``Docker``) or another cluster's Service
(``<cluster>-<ns>-<svc>``) into a valid DNS-1035 label, the name rule of Services. A text
that already is one is kept as it is; anything changed, or too long, gets a short hash of
the original, so two texts that clean up the same (``Docker`` and ``docker``) still get
distinct names. Callers: ``plan_imports`` (and, through it, the tests that predict names).

Must not: do I/O, or depend on anything but the text (every bridge computes the same name).
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
_CUT = 54  # 54 + "-" + 8 hex = 63
_INVALID = re.compile(r"[^a-z0-9]")
_DASHES = re.compile(r"-+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def dns1035(text: str) -> str:
    """A DNS-1035 label for ``text``: itself when valid, else cleaned with a hash suffix."""
    name = _DASHES.sub("-", _INVALID.sub("-", text.lower())).strip("-")
    if name[:1] not in tuple(_LETTERS):
        name = "x-" + name
    if name == text and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{name[:_CUT]}-{digest}"
