"""The owned-tags planner and the merge-patch delta it shares with the adapter's callers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfbridge.kubemodels import NodeInfo
from serfbridge.plan_owned import REASON, maybe_owned_tags_patch, metadata_delta

KEY = "serfbridge.io/owned-tags"


def node(**annotations: str) -> NodeInfo:
    return NodeInfo("k1", "k1", {}, annotations, (), True)


@pytest.mark.parametrize(
    ("current", "wanted", "delta"),
    [
        pytest.param({"a": "1"}, {"a": "1"}, {}, id="same-value"),
        pytest.param({"a": "1"}, {"a": "2"}, {"a": "2"}, id="change"),
        pytest.param({}, {"a": "1"}, {"a": "1"}, id="add"),
        pytest.param({"a": "1"}, {"a": None}, {"a": None}, id="remove"),
        pytest.param({}, {"a": None}, {}, id="remove-absent"),
        pytest.param({"a": "1", "b": "2"}, {"b": "2", "c": None}, {}, id="nothing-to-do"),
    ],
)
def test_metadata_delta(current, wanted, delta):
    assert metadata_delta(current, wanted) == delta


@given(
    current=st.dictionaries(st.sampled_from("abcd"), st.sampled_from("12")),
    wanted=st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["1", "2", None])),
)
def test_applying_the_delta_reaches_what_was_wanted(current, wanted) -> None:
    after = {**current, **metadata_delta(current, wanted)}
    after = {k: v for k, v in after.items() if v is not None}
    assert all(after.get(k) == v for k, v in wanted.items())
    assert {k: v for k, v in after.items() if k not in wanted} == {
        k: v for k, v in current.items() if k not in wanted
    }


@pytest.mark.parametrize(
    ("annotations", "owned", "synced", "expected"),
    [
        pytest.param({}, ("role",), True, {KEY: "role"}, id="record-new"),
        pytest.param({KEY: "role"}, ("role",), True, None, id="already-recorded"),
        pytest.param({KEY: "old"}, ("a", "b"), True, {KEY: "a,b"}, id="changed"),
        pytest.param({KEY: "role"}, (), True, {KEY: None}, id="none-owned-removes"),
        pytest.param({}, (), True, None, id="none-owned-none-recorded"),
        pytest.param({}, ("role",), False, None, id="unsynced-writes-nothing"),
    ],
)
def test_owned_tags_patch(annotations, owned, synced, expected) -> None:
    patch = maybe_owned_tags_patch(node(**annotations), owned, key=KEY, synced=synced)
    if expected is None:
        assert patch is None
    else:
        assert patch is not None
        assert (patch.node, patch.labels, patch.annotations, patch.reason) == (
            "k1",
            {},
            expected,
            REASON,
        )


def test_no_node_no_patch() -> None:
    assert maybe_owned_tags_patch(None, ("role",), key=KEY, synced=True) is None
