"""Rendezvous (highest-random-weight) hashing: who is first for a key, deterministically.

Every bridge computes the same ranking from the same inputs, with no coordination: the
one-writer rule for a failed Node's labels (``plan_labels``) and the placement of each
Service port on ``replicas`` nodes (``plan_publish``) both use it. When a candidate
disappears, only the keys it ranked first for move, each to its next-ranked candidate.

Pure: no I/O, no randomness beyond the hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(key: str, candidate: str) -> int:
    digest = hashlib.sha256(f"{key}\x00{candidate}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big")


def rank(key: str, candidates: Iterable[str]) -> list[str]:
    """``candidates`` ordered best first for ``key`` (ties broken by name)."""
    return sorted(set(candidates), key=lambda c: (-weight(key, c), c))
