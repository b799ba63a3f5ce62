"""Rendezvous hashing (rendezvous.py): who is first for a key, as tables of named cases.

Every bridge ranks alone and must agree with every other, across versions too (a cluster
upgrades one node at a time), so the rankings are pinned as golden values: a change of
the hash recipe fails here before it splits a cluster's writers.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfbridge import rendezvous


@pytest.mark.parametrize(
    ("key", "candidates", "expected"),
    [
        pytest.param("lab/default/web/80", ["k1", "k2", "k3"], ["k3", "k1", "k2"], id="port"),
        pytest.param(
            "lab/default/web/80",
            ["k1", "k2", "k3", "k4", "k5"],
            ["k5", "k4", "k3", "k1", "k2"],
            id="port-five-nodes",
        ),
        pytest.param("k3", ["k1", "k2"], ["k1", "k2"], id="failed-node-writer"),
        pytest.param("k3", ["k2", "k1", "k2"], ["k1", "k2"], id="duplicates-once"),
        pytest.param("any", [], [], id="no-candidates"),
        pytest.param("", ["a"], ["a"], id="empty-key"),
    ],
)
def test_rank(key: str, candidates: list[str], expected: list[str]) -> None:
    assert rendezvous.rank(key, candidates) == expected


def test_weight_is_the_first_8_bytes_of_sha256_of_key_nul_candidate() -> None:
    assert rendezvous.weight("a", "b") == 6463353407833682387  # golden, big-endian


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param(("a", "b"), ("b", "a"), id="key-and-candidate-not-symmetric"),
        pytest.param(("\udcff", "b"), ("?", "b"), id="gossip-bytes-hashed-as-bytes"),
    ],
)
def test_different_inputs_weigh_differently(one: tuple[str, str], other: tuple[str, str]) -> None:
    assert rendezvous.weight(*one) != rendezvous.weight(*other)


names = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=8, unique=True)


@given(key=st.text(max_size=20), candidates=names, seed=st.randoms())
def test_the_order_given_does_not_matter(key: str, candidates: list[str], seed) -> None:
    shuffled = list(candidates)
    seed.shuffle(shuffled)
    assert rendezvous.rank(key, shuffled) == rendezvous.rank(key, candidates)


@given(key=st.text(max_size=20), candidates=names, data=st.data())
def test_a_candidate_leaving_moves_only_what_it_ranked_first_for(
    key: str, candidates: list[str], data
) -> None:
    gone = data.draw(st.sampled_from(candidates))
    before = rendezvous.rank(key, candidates)
    after = rendezvous.rank(key, [c for c in candidates if c != gone])
    assert after == [c for c in before if c != gone]
