"""``rpc.models``: each ``parse_*`` as a table of named cases (no socket, no agent).

Every case gives the raw msgpack value (as ``msgpack`` decodes the agent's bytes, §3-§5)
and the typed value it must become, or the ``RemoteProtocolError`` a wrong shape must
raise. Nothing else may come out of a parser.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from serfbridge.errors import RemoteProtocolError
from serfbridge.rpc import models
from serfbridge.rpc.models import (
    Coordinate,
    LogLine,
    Member,
    MemberEvent,
    QueryEvent,
    QueryRecord,
    UserEvent,
)
from tests.lab.fake_core_agent import member

V4 = b"\x0a\x8b\x28\x32"
V6 = b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"
N1 = Member("n1", "127.0.0.1", 7946, {}, "alive", (1, 5, 2), (2, 5, 4))


def raw_member(**fields: object) -> dict[str, object]:
    raw = member("n1")
    raw.update(fields)
    return raw


def without(key: str) -> dict[str, object]:
    raw = member("n1")
    del raw[key]
    return raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(member("n1"), N1, id="all-eleven-keys"),
        pytest.param(raw_member(Addr=V4), N1._replace(addr="10.139.40.50"), id="v4"),
        pytest.param(raw_member(Addr=V6), N1._replace(addr="2001:db8::1"), id="v6"),
        pytest.param(raw_member(Addr=None), N1._replace(addr=""), id="no-addr"),
        pytest.param(raw_member(Tags=None), N1, id="nil-tags"),
        pytest.param(
            raw_member(Tags={"role": "db", "k8s": "lab/k1"}),
            N1._replace(tags={"role": "db", "k8s": "lab/k1"}),
            id="tags",
        ),
        pytest.param(
            without("DelegateCur"), N1._replace(delegate=(2, 5, 0)), id="missing-key-is-zero"
        ),
        pytest.param(raw_member(Extra="ignored"), N1, id="extra-key-ignored"),
        pytest.param(raw_member(Name="n\udcff"), N1._replace(name="n\udcff"), id="surrogate-name"),
    ],
)
def test_parse_member(raw: object, expected: Member) -> None:
    assert models.parse_member(raw) == expected


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param([], "expected a map", id="not-a-map"),
        pytest.param(raw_member(Name=b"n1"), "Name/Status", id="name-bytes"),
        pytest.param(raw_member(Port="7946"), "Port", id="port-text"),
        pytest.param(raw_member(Port=True), "Port", id="port-bool"),
        pytest.param(raw_member(Addr=b"\x01\x02\x03"), "4 or 16 bytes", id="addr-3-bytes"),
        pytest.param(raw_member(Addr="127.0.0.1"), "4 or 16 bytes", id="addr-text"),
        pytest.param(raw_member(Tags={"a": 1}), "string values", id="tag-value-int"),
        pytest.param(raw_member(Tags=[]), "expected a map", id="tags-list"),
    ],
)
def test_parse_member_refuses(raw: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        models.parse_member(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"Members": [member("n1")]}, (N1,), id="one"),
        pytest.param({"Members": []}, (), id="empty"),
        pytest.param({"Members": None}, (), id="nil"),
        pytest.param({}, (), id="missing"),
    ],
)
def test_parse_members(raw: object, expected: tuple[Member, ...]) -> None:
    assert models.parse_members(raw) == expected


USER = {"Event": "user", "Name": "deploy", "Payload": b"v1", "LTime": 7, "Coalesce": True}
QUERY = {"Event": "query", "ID": 3, "Name": "ping", "Payload": None, "LTime": 9}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(USER, UserEvent("deploy", b"v1", 7, True), id="user"),
        pytest.param(
            {**USER, "Payload": None}, UserEvent("deploy", b"", 7, True), id="nil-payload"
        ),
        pytest.param(
            {**USER, "Payload": "v1"}, UserEvent("deploy", b"v1", 7, True), id="str-payload"
        ),
        pytest.param(QUERY, QueryEvent(3, "ping", b"", 9), id="query"),
        pytest.param(
            {"Event": "member-join", "Members": [member("n1")]},
            MemberEvent("member-join", (N1,)),
            id="member-join",
        ),
        pytest.param(
            {"Event": "member-reap", "Members": None}, MemberEvent("member-reap", ()), id="reap"
        ),
    ],
)
def test_parse_event_record(raw: object, expected: object) -> None:
    assert models.parse_event_record(raw) == expected


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param({"Event": "member-explode"}, "unknown stream event", id="unknown-kind"),
        pytest.param({"Event": 1}, "expected a string", id="kind-int"),
        pytest.param({**USER, "LTime": "7"}, "LTime", id="ltime-text"),
        pytest.param({**USER, "Coalesce": 1}, "boolean", id="coalesce-int"),
        pytest.param({**USER, "Payload": 5}, "expected bytes", id="payload-int"),
        pytest.param({**QUERY, "ID": None}, "ID", id="query-id-nil"),
        pytest.param({"Event": "member-join", "Members": {}}, "expected a list", id="members-map"),
        pytest.param({1: "user"}, "string keys", id="int-key"),
    ],
)
def test_parse_event_record_refuses(raw: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        models.parse_event_record(raw)


@pytest.mark.parametrize(
    ("parse", "raw", "expected"),
    [
        pytest.param(
            models.parse_query_record,
            {"Type": "response", "From": "n2", "Payload": b"ok"},
            QueryRecord("response", "n2", b"ok"),
            id="query-response",
        ),
        pytest.param(
            models.parse_query_record,
            {"Type": "done", "From": "", "Payload": None},
            QueryRecord("done", "", b""),
            id="query-done",
        ),
        pytest.param(models.parse_log_record, {"Log": "[INFO] x"}, LogLine("[INFO] x"), id="log"),
        pytest.param(models.parse_log_record, {}, LogLine(""), id="log-empty"),
        pytest.param(models.parse_join, {"Num": 2}, 2, id="join"),
        pytest.param(models.parse_join, {}, 0, id="join-missing"),
        pytest.param(
            models.parse_stats,
            {"agent": {"name": "n1"}, "tags": None},
            {"agent": {"name": "n1"}, "tags": {}},
            id="stats",
        ),
        pytest.param(
            models.parse_coordinate,
            {"Ok": True, "Coord": {"Vec": [1, 0.5], "Error": 1, "Adjustment": 0.1, "Height": 2}},
            Coordinate((1.0, 0.5), 1.0, 0.1, 2.0),
            id="coordinate",
        ),
        pytest.param(models.parse_coordinate, {"Ok": False, "Coord": None}, None, id="no-coord"),
    ],
)
def test_parse_replies_and_records(parse: Callable[[object], object], raw, expected) -> None:
    assert parse(raw) == expected


@pytest.mark.parametrize(
    ("parse", "raw", "match"),
    [
        pytest.param(models.parse_query_record, {"Type": "nack"}, "unknown query", id="query"),
        pytest.param(models.parse_log_record, {"Log": b"x"}, "string", id="log-bytes"),
        pytest.param(models.parse_join, {"Num": 1.5}, "integer", id="join-float"),
        pytest.param(models.parse_join, None, "expected a map", id="join-nil"),
        pytest.param(models.parse_stats, {"agent": {"n": 1}}, "string values", id="stats"),
        pytest.param(
            models.parse_coordinate, {"Ok": True, "Coord": {"Vec": ["x"]}}, "numbers", id="vec"
        ),
        pytest.param(
            models.parse_coordinate, {"Ok": True, "Coord": {"Height": True}}, "number", id="bool"
        ),
        pytest.param(models.parse_coordinate, {"Ok": "yes"}, "boolean", id="ok-text"),
    ],
)
def test_parse_replies_and_records_refuse(parse, raw, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        parse(raw)


def test_member_json_shape() -> None:
    v6 = models.parse_member(raw_member(Addr=V6, Tags={"a": "b"}))
    assert v6.to_json() == {
        "name": "n1",
        "addr": "[2001:db8::1]:7946",
        "port": 7946,
        "tags": {"a": "b"},
        "status": "alive",
        "protocol": {"min": 1, "max": 5, "version": 2},
    }
    assert N1.to_json()["addr"] == "127.0.0.1:7946"
