"""Unit tests for serfbridge.cloudy: golden vectors from reference/cloudy-avahi-ps.md §1.9."""

from __future__ import annotations

import base64
import bz2
import dataclasses
import json
import random
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from serfbridge.cloudy import (
    MAX_DECODED_BYTES,
    SERVICES_TAG,
    DecodeResult,
    Entry,
    TagChange,
    decode_members,
    decode_services,
    decode_services_report,
    encode_services,
    filter_rows,
    is_owned_by,
    make_entry,
    maybe_owner,
    owner_txt,
    plan_services_tag,
    remove,
    sanitize_entry,
    search_json,
    upsert,
)
from serfbridge.errors import BudgetError, ServicesDecodeError, UsageError
from serfbridge.rpc.budget import encoded_tags_size, fits

# --- golden vectors (reference §1.9) -----------------------------------------------------

NGINX = Entry(
    type="kubernetes",
    description="nginx",
    host="cloudy-master.guifi.local",
    ip="10.139.40.50",
    port="30080",
    microcloud="demo",
    txt="NodePort",
)
SERF_SELF = Entry(
    type="serf",
    description="SERF_instance_running",
    host="cloudy-master.guifi.local",
    ip="10.139.40.50",
    port="5000",
    microcloud="demo",
    txt="",
)
TAG_ONE_K8S = (
    "QlpoOTFBWSZTWXPD/h4AACBfgAAQEAducAABQAo/r95qIABqIp+pBpkGQA9Ro0GQap6aJoAAGgGTEa9O/qOri4f49y3J"
    "JgBAAQCWlJCzYfWmepmlZidBGlIAwZFukWLBEgtRk4o4lbK+aBwVWbr9jpub89CljAIrCu5o0Mvyir8XckU4UJBzw/4e"
)
RAW_ONE_K8S = (
    b'[{"s":"kubernetes","d":"nginx","m":"cloudy-master.guifi.local","i":"10.139.40.50",'
    b'"p":"30080","e":"demo","t":"NodePort"}]\n'
)
TAG_SERF_K8S = (
    "QlpoOTFBWSZTWcMTMN0AAEDfgAAQEAducAMBWAq/r95qMAC5AlRpT1PKemoHqZDRtQPUGNQxo0aAZMhoxGmgaYCVT9JI"
    "yDQBhM9RGmTRk7TV47DyfboGBIGV58GvxMDfBSBzEIEhIzGY6SoItNDgWCMziM7lY5HB23Di1jA0IxiJVKJd4Tvv8txL"
    "ehWZWAIsYLJuWOJ5o++8QuNRQsNGXpuY42DD8SGxi2FjCR9MckHEAu3IxUIiEbVNq8kNfxPlYH8XckU4UJDDEzDd"
)
REAL_TAG_1 = (
    "QlpoOTFBWSZTWYyBIrAAACDfgAAQEAU3cAABTQq/p98qIAB0KmamNQAaA00NGmj1CE1DTTTIDTQD1BoCxgGvU1qSGcNu"
    "DVCWkQR6RLEbmWzg5wpel4RESCEcNtwe0nBHN0TiZsGXyr89gMVvEZjdByRAu5E6UKOTFfEn8XckU4UJCMgSKwA="
)
TINC_141 = Entry(
    "tincvpn", "TincVPN_System", "raspberrypi.guifi.local", "192.168.1.141", "665", "", ""
)
TINC_2 = Entry("tincvpn", "TincVPN_System", "raspberry-2.guifi.local", "", "665", "", "")
TINC_140 = Entry("tincvpn", "TincVPN_System", "raspberry-1.guifi.local", "192.168.1.140", "665")
TEST_140 = Entry("TEST", "TEST", "raspberry-1.guifi.local", "192.168.1.140", "TEST", "", "TEST")


def recipe_encode(raw: bytes) -> str:
    """The reference's encoding recipe, applied to raw list bytes."""
    return base64.b64encode(bz2.compress(raw, 9)).decode("ascii")


def recipe_decode(value: str) -> object:
    """The reference's decoding recipe, literally."""
    return json.loads(bz2.decompress(base64.b64decode(value)).decode().replace("'", '"'))


def test_golden_one_k8s_service():
    assert encode_services([NGINX]) == TAG_ONE_K8S
    assert bz2.decompress(base64.b64decode(TAG_ONE_K8S)) == RAW_ONE_K8S
    assert decode_services(TAG_ONE_K8S) == [NGINX]


def test_golden_serf_plus_k8s():
    assert encode_services([SERF_SELF, NGINX]) == TAG_SERF_K8S
    assert decode_services(TAG_SERF_K8S) == [SERF_SELF, NGINX]
    # §1.9 quotes 286 B of meta for this one, and 184 b64 chars for the one above. It says
    # 197 B for that one: off by one, a 184-byte value takes a 3-byte old-spec raw16 header.
    assert encoded_tags_size({SERVICES_TAG: TAG_SERF_K8S}) == 286
    assert len(TAG_ONE_K8S) == 184
    assert encoded_tags_size({SERVICES_TAG: TAG_ONE_K8S}) == 1 + 1 + 9 + 3 + 184


def test_golden_real_lab_tag():
    assert decode_services_report(REAL_TAG_1) == DecodeResult((TINC_141,), ())
    assert encode_services([TINC_141]) == REAL_TAG_1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b'[{"s":"tincvpn","d":"TincVPN_System","m":"raspberry-2.guifi.local","i":"",'
            b'"p":"665","e":"","t":""}]\n',
            [TINC_2],
            id="lab-empty-ip",
        ),
        pytest.param(
            b'[{"s":"tincvpn","d":"TincVPN_System","m":"raspberry-1.guifi.local",'
            b'"i":"192.168.1.140","p":"665","e":"","t":""},{"s":"TEST","d":"TEST",'
            b'"m":"raspberry-1.guifi.local","i":"192.168.1.140","p":"TEST","e":"","t":"TEST"}]\n',
            [TINC_140, TEST_140],
            id="lab-tinc-and-TEST",
        ),
        pytest.param(
            b'[{"s":"tincvpn","d":"TincVPN_System","m":"raspberry-1.guifi.local",'
            b'"i":"192.168.1.140","p":"665","e":"","t":""},{\'s\':\'TEST\',\'d\':\'TEST\','
            b"'m':'raspberry-1.guifi.local','i':'192.168.1.140','p':'TEST','e':'','t':'TEST'}]\n",
            [TINC_140, TEST_140],
            id="legacy-single-quoted-last-entry",
        ),
        pytest.param(
            b"[{'s':'TEST','d':'TEST','m':'raspberry-1.guifi.local','i':'192.168.1.140',"
            b"'p':'TEST','e':'','t':'TEST'}]\n",
            [TEST_140],
            id="legacy-all-single-quoted",
        ),
        pytest.param(b"[]\n", [], id="empty-list"),
    ],
)
def test_decode_lab_and_legacy_lists(raw, expected):
    value = recipe_encode(raw)
    assert decode_services_report(value) == DecodeResult(tuple(expected), ())
    if b"'" not in raw:  # we write exactly what avahi-ps writes
        assert encode_services(expected) == value


# --- decoding tolerance -----------------------------------------------------------------

_RNG = random.Random(3)
RANDOM_TEXT = "".join(_RNG.choice(string.printable) for _ in range(400))
RANDOM_B64ISH = "".join(_RNG.choice(string.ascii_letters + "0123456789+/") for _ in range(400))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("!!! not base64 !!!", "base64", id="garbage-base64"),
        pytest.param("QlpoOTFBWSZTW", "base64", id="bad-padding"),
        pytest.param("ñandú", "base64", id="non-ascii"),
        pytest.param("\udcff", "base64", id="surrogate"),
        pytest.param(base64.b64encode(b"hello world").decode(), "bzip2", id="not-bzip2"),
        pytest.param(TAG_ONE_K8S[:100], "bzip2", id="truncated-bzip2"),
        pytest.param("", "empty", id="empty"),
        pytest.param(recipe_encode(b"\xff\xfe[]"), "UTF-8", id="not-utf8"),
        pytest.param(recipe_encode(b'[{"s":"x",'), "JSON", id="invalid-json"),
        pytest.param(recipe_encode(b'{"s":"x"}\n'), "not a JSON list (got object)", id="object"),
        pytest.param(recipe_encode(b'"x"\n'), "not a JSON list (got string)", id="string"),
        pytest.param(recipe_encode(b"[" * 30_000), "JSON", id="deep-nesting"),  # under the byte cap
        pytest.param(recipe_encode(RANDOM_TEXT.encode()), "JSON", id="random-text-in-bzip2"),
        pytest.param(RANDOM_TEXT, "base64", id="400-bytes-random-text"),
        pytest.param(RANDOM_B64ISH, "bzip2", id="400-bytes-random-base64-alphabet"),
        pytest.param(
            recipe_encode(b" " * (MAX_DECODED_BYTES + 1)), "expands beyond", id="bzip2-bomb"
        ),
    ],
)
def test_corrupt_tags_raise_decode_error(value, reason):
    with pytest.raises(ServicesDecodeError, match=re.escape(reason)):
        decode_services(value)


def test_decode_tolerates_odd_entries_and_reports_each():
    raw = (
        b'[{"s":"a","p":665,"d":null,"m":true,"i":1.5},"junk",{"s":"b","p":["x"]},'
        b'{"s":"c","d":"c","m":"h","i":"1.2.3.4","p":"1","e":"","t":"","extra":"ignored"}]\n'
    )
    result = decode_services_report(recipe_encode(raw))
    assert result.entries == (
        Entry(type="a", description="", host="true", ip="1.5", port="665"),
        Entry("c", "c", "h", "1.2.3.4", "1", "", ""),
    )
    assert result.problems == (
        "entry 1: 'd' is a JSON null, read as ''",
        "entry 1: 'm' is a JSON boolean, read as 'true'",
        "entry 1: 'i' is a JSON number, read as '1.5'",
        "entry 1: 'p' is a JSON number, read as '665'",
        "entry 1: missing 'e', read as ''",
        "entry 1: missing 't', read as ''",
        "entry 2: not a JSON object (got string), skipped",
        "entry 3: 'p' is a JSON list, skipped",
    )


def test_decode_accepts_concatenated_streams_and_ignores_trailing_garbage():
    one = bz2.compress(b'[{"s":"a","d":"a","m":"","i":"","p":"1",', 9)
    two = bz2.compress(b'"e":"","t":""}]\n', 9)
    assert decode_services(base64.b64encode(one + two).decode()) == [Entry("a", "a", port="1")]
    garbage = bz2.compress(RAW_ONE_K8S, 9) + b"trailing junk"
    assert decode_services(base64.b64encode(garbage).decode()) == [NGINX]


def test_decode_ignores_whitespace_in_the_value():
    assert decode_services(" " + TAG_ONE_K8S[:50] + "\n" + TAG_ONE_K8S[50:] + "\n") == [NGINX]


# --- encoding ---------------------------------------------------------------------------


def test_encode_refuses_single_quote_anywhere():
    with pytest.raises(UsageError, match="txt must not contain"):
        encode_services([Entry("a", "b", port="1", txt="it's")])


def test_encode_refuses_surrogates():
    with pytest.raises(UsageError, match="not valid Unicode"):
        encode_services([Entry("a", "\udcff", port="1")])


def test_foreign_entries_with_odd_values_round_trip():
    # What avahi-ps itself stores for txt "k1=v1&k2=v2", and a JSON-escaped quote.
    odd = [Entry("x", "d", port="1", txt="k1=v1 k2=v2"), Entry("y", 'a"b\\c', port="2")]
    assert decode_services(encode_services(odd)) == odd


def test_entry_wire_form_and_key():
    assert list(NGINX.to_wire()) == ["s", "d", "m", "i", "p", "e", "t"]
    assert Entry.from_wire(NGINX.to_wire()) == NGINX
    assert NGINX.key == ("kubernetes", "30080")


# --- members and search -----------------------------------------------------------------


@dataclass(frozen=True)
class FakeMember:
    name: str
    status: str
    tags: Mapping[str, str]


def test_decode_members_skips_broken_member_with_a_warning_naming_it():
    members = [
        ("master", "alive", {SERVICES_TAG: TAG_SERF_K8S, "role": "x"}),
        FakeMember("broken-node", "alive", {SERVICES_TAG: "!!garbage!!"}),
        FakeMember("gone", "failed", {SERVICES_TAG: TAG_ONE_K8S}),
        ("left-node", "left", {SERVICES_TAG: "!!garbage!!"}),
        ("plain", "alive", {"role": "web"}),
        FakeMember("pi", "alive", {SERVICES_TAG: REAL_TAG_1}),
    ]
    rows, warnings = decode_members(members)
    assert [(r["node_id"], r["s"]) for r in rows] == [
        ("master", "serf"),
        ("master", "kubernetes"),
        ("pi", "tincvpn"),
    ]
    assert all(list(r) == ["node_id", "s", "d", "m", "i", "p", "e", "t"] for r in rows)
    assert len(warnings) == 1
    assert "'broken-node'" in warnings[0]
    assert "base64" in warnings[0]


def test_decode_members_reports_entry_problems_per_member():
    value = recipe_encode(b'[{"s":"a","d":"a","m":"","i":"","p":"1","e":""},7]\n')
    rows, warnings = decode_members([("n1", "alive", {SERVICES_TAG: value})])
    assert [r["s"] for r in rows] == ["a"]
    assert warnings == [
        "member 'n1': entry 1: missing 't', read as ''",
        "member 'n1': entry 2: not a JSON object (got number), skipped",
    ]


def test_search_json_is_avahi_ps_line():
    rows, _ = decode_members([("n1", "alive", {SERVICES_TAG: TAG_ONE_K8S})])
    assert search_json(rows) == (
        '[{"node_id":"n1","s":"kubernetes","d":"nginx","m":"cloudy-master.guifi.local",'
        '"i":"10.139.40.50","p":"30080","e":"demo","t":"NodePort"}]'
    )
    assert search_json([]) == "[]"


def test_search_json_reversed_matches_avahi_ps_order_and_escapes_like_jq():
    rows = [{"node_id": "a", "s": "x"}, {"node_id": "b", "s": "y\x7f\n"}]
    assert search_json(reversed(rows)) == (
        '[{"node_id":"b","s":"y\\u007f\\n"},{"node_id":"a","s":"x"}]'
    )


ROWS = [
    {"node_id": "n1-abc", "s": "kubernetes", "m": "k8s-node1.guifi.local", "i": "10.0.0.1"},
    {"node_id": "n2-def", "s": "serf", "m": "k8s-node2.guifi.local", "i": "10.0.0.2"},
    {"node_id": "n2-def", "s": "Docker", "m": "k8s-node2.guifi.local", "i": "10.0.0.2"},
]


@pytest.mark.parametrize(
    ("kwargs", "expected_ids"),
    [
        pytest.param({}, [0, 1, 2], id="no-filter"),
        pytest.param({"service_type": "", "host": ""}, [0, 1, 2], id="empty-is-no-filter"),
        pytest.param({"service_type": "serf"}, [1], id="type"),
        pytest.param({"service_type": "docker"}, [], id="type-is-case-sensitive"),
        pytest.param({"host": "k8s-node2.guifi.local"}, [1, 2], id="host-fqdn"),
        pytest.param({"host": "K8S-NODE2"}, [1, 2], id="host-short-name-any-case"),
        pytest.param({"host": "n1-abc"}, [0], id="host-node-id"),
        pytest.param({"host": "10.0.0.2"}, [1, 2], id="host-ip"),
        pytest.param({"host": "10.0.0"}, [], id="host-no-partial-match"),
        pytest.param({"service_type": "Docker", "host": "10.0.0.2"}, [2], id="both"),
        pytest.param({"service_type": "serf", "host": "n1-abc"}, [], id="both-no-match"),
    ],
)
def test_filter_rows(kwargs, expected_ids):
    assert filter_rows(ROWS, **kwargs) == [ROWS[i] for i in expected_ids]


# --- sanitizer --------------------------------------------------------------------------

BASE = {
    "description": "nginx",
    "type": "kubernetes",
    "port": "30080",
    "txt": "NodePort",
    "host": "cloudy-master.guifi.local",
    "ip": "10.139.40.50",
    "microcloud": "demo",
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, {}, id="plain"),
        pytest.param({"description": "my web app"}, {"description": "my_web_app"}, id="spaces"),
        pytest.param({"description": "  a \t\n b  "}, {"description": "a_b"}, id="ws-runs"),
        pytest.param({"description": "café_ñ"}, {}, id="unicode-ok"),
        pytest.param({"port": "030080"}, {"port": "30080"}, id="port-canonical"),
        pytest.param({"port": 65535}, {"port": "65535"}, id="port-int"),
        pytest.param({"ip": "", "microcloud": "", "txt": ""}, {}, id="empty-optional"),
        pytest.param({"txt": "k8s=c/ns/svc/30080"}, {}, id="owner-txt"),
        pytest.param({"type": "tahoe-lafs"}, {}, id="type-dash"),
    ],
)
def test_make_entry_accepts(changes, expected):
    entry = make_entry(**{**BASE, **changes})
    want = {**BASE, **changes, **expected}
    assert entry == Entry(
        type=want["type"],
        description=want["description"],
        host=want["host"],
        ip=want["ip"],
        port=str(want["port"]),
        microcloud=want["microcloud"],
        txt=want["txt"],
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"port": "x"}, "port must be a number 1-65535, got 'x'", id="port-word"),
        pytest.param({"port": "0"}, "got '0'", id="port-zero"),
        pytest.param({"port": "65536"}, "got '65536'", id="port-too-big"),
        pytest.param({"port": ""}, "got ''", id="port-empty"),
        pytest.param({"port": "-1"}, "got '-1'", id="port-negative"),
        pytest.param({"port": " 80"}, "got ' 80'", id="port-space"),
        pytest.param({"port": "８０"}, "port must be a number", id="port-fullwidth"),
        pytest.param({"txt": "k1=v1&k2=v2"}, "txt must not contain '&'", id="txt-ampersand"),
        pytest.param({"txt": "a b"}, "txt must not contain ' '", id="txt-space"),
        pytest.param({"description": "it's"}, 'description must not contain "\'"', id="quote1"),
        pytest.param({"description": 'a"b'}, "description must not contain '\"'", id="quote2"),
        pytest.param({"description": "a\\b"}, "description must not contain '\\\\\\\\'", id="bs"),
        pytest.param({"description": "a\x00b"}, "description must not contain '\\\\x00'", id="nul"),
        pytest.param({"host": "a b"}, "host must not contain ' '", id="host-space"),
        pytest.param({"ip": "1.2.3.4\x7f"}, "ip must not contain '\\\\x7f'", id="ip-del"),
        pytest.param({"microcloud": "a\u00a0b"}, "microcloud must not contain", id="nbsp"),
        pytest.param({"txt": "a&"}, "txt", id="txt-amp-end"),
        pytest.param({"type": ""}, "type must not be empty", id="type-empty"),
        pytest.param({"type": "my type"}, "type must not contain ' '", id="type-space"),
        pytest.param({"type": "a*b"}, "type must not contain '\\*'", id="type-regex"),
        pytest.param({"description": "  "}, "description must not be empty", id="desc-blank"),
    ],
)
def test_make_entry_rejects(changes, message):
    with pytest.raises(UsageError, match=message):
        make_entry(**{**BASE, **changes})


def test_sanitize_entry_is_idempotent():
    once = sanitize_entry(Entry("kubernetes", "a  b", "h", "1.1.1.1", "080", "c", "t"))
    assert (
        sanitize_entry(once) == once == Entry("kubernetes", "a_b", "h", "1.1.1.1", "80", "c", "t")
    )


# --- read-modify-write ------------------------------------------------------------------

A = Entry("serf", "SERF_instance_running", port="5000")
B = Entry("kubernetes", "old", port="30080")
C = Entry("tincvpn", "TincVPN_System", port="665")


def test_upsert_replaces_in_place_and_keeps_others():
    new_b = Entry("kubernetes", "new", port="30080")
    assert upsert([A, B, C], new_b) == [A, new_b, C]


def test_upsert_appends_new_key_and_drops_duplicates():
    d = Entry("kubernetes", "d", port="30081")
    assert upsert([A, C], d) == [A, C, d]
    assert upsert([B, A, B], B) == [B, A]


def test_upsert_same_entry_gives_same_tag_value():
    assert encode_services(upsert([A, B, C], B)) == encode_services([A, B, C])


def test_remove():
    assert remove([A, B, C], "kubernetes", port=30080) == [A, C]
    assert remove([A, B, C], "kubernetes", port="30081") == [A, B, C]
    assert remove([TEST_140], "TEST", port="TEST") == []


@pytest.mark.parametrize(
    ("current", "entries", "expected"),
    [
        pytest.param({}, [], TagChange(), id="empty-and-absent-noop"),
        pytest.param({SERVICES_TAG: TAG_ONE_K8S}, [], TagChange(delete=("services",)), id="del"),
        pytest.param({SERVICES_TAG: TAG_ONE_K8S}, [NGINX], TagChange(), id="unchanged-noop"),
        pytest.param(
            {"role": "x"}, [NGINX], TagChange(set_tags={SERVICES_TAG: TAG_ONE_K8S}), id="set"
        ),
        pytest.param(
            {SERVICES_TAG: TAG_ONE_K8S},
            [SERF_SELF, NGINX],
            TagChange(set_tags={SERVICES_TAG: TAG_SERF_K8S}),
            id="changed",
        ),
        pytest.param(
            {SERVICES_TAG: recipe_encode(RAW_ONE_K8S.replace(b'"', b"'"))},
            [NGINX],
            TagChange(set_tags={SERVICES_TAG: TAG_ONE_K8S}),
            id="legacy-value-normalised",
        ),
    ],
)
def test_plan_services_tag(current, entries, expected):
    change = plan_services_tag(current, entries)
    assert change == expected
    assert change.noop == (not expected.set_tags and not expected.delete)


def test_plan_unchanged_is_noop_even_over_the_limit():
    assert plan_services_tag({SERVICES_TAG: TAG_ONE_K8S}, [NGINX], limit=100).noop


def typical_k8s_entry(index: int) -> Entry:
    names = ["nginx", "grafana", "prometheus", "gitea", "nextcloud", "jellyfin", "postgres"]
    svc, ns, port = f"{names[index % len(names)]}{index}", "apps", 30000 + index
    return make_entry(
        description=f"{ns}_{svc}",
        type="kubernetes",
        port=port,
        txt=owner_txt(cluster="lab", namespace=ns, service=svc, port=port),
        host="k8s-node1.guifi.local",
        ip="10.139.40.51",
        microcloud="lab",
    )


def test_plan_budget_edge_refuses_one_more_with_both_sizes():
    current = {"k8s": "lab/k8s-node1"}
    entries: list[Entry] = []
    while True:
        candidate = [*entries, typical_k8s_entry(len(entries))]
        try:
            change = plan_services_tag(current, candidate)
        except BudgetError as exc:
            refused = exc
            break
        assert fits({**current, **change.set_tags})
        entries = candidate
    assert len(entries) >= 3
    accepted = plan_services_tag(current, entries)
    assert encoded_tags_size({**current, **accepted.set_tags}) <= 512
    assert refused.limit == 512 and refused.size > 512
    assert str(refused) == (
        f"services tag would make this node's tags {refused.size} bytes; the limit is 512"
    )
    assert refused.size == encoded_tags_size(
        {**current, SERVICES_TAG: encode_services([*entries, typical_k8s_entry(len(entries))])}
    )


def test_plan_counts_the_other_tags():
    entry_size = encoded_tags_size({SERVICES_TAG: TAG_ONE_K8S})
    plan_services_tag({}, [NGINX], limit=entry_size)
    with pytest.raises(BudgetError) as info:
        plan_services_tag({"role": "web"}, [NGINX], limit=entry_size)
    assert info.value.size == entry_size + len(b"\xa4role\xa3web")


# --- ownership --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("txt", "cluster", "owned"),
    [
        pytest.param("k8s=lab/apps/nginx/30080", "lab", True, id="ours"),
        pytest.param("k8s=other/apps/nginx/30080", "lab", False, id="other-cluster"),
        pytest.param("k8s=lab/apps/nginx", "lab", False, id="too-short"),
        pytest.param("k8s=lab/apps/nginx/30080/x", "lab", False, id="too-long"),
        pytest.param("k8s=lab//nginx/30080", "lab", False, id="empty-part"),
        pytest.param("NodePort", "lab", False, id="serf-publisher"),
        pytest.param("", "lab", False, id="empty"),
        pytest.param("xk8s=lab/apps/nginx/30080", "lab", False, id="prefix"),
    ],
)
def test_is_owned_by(txt, cluster, owned):
    assert is_owned_by(Entry("kubernetes", "d", port="1", txt=txt), cluster) is owned


def test_owner_txt_round_trip():
    txt = owner_txt(cluster="lab", namespace="apps", service="nginx", port=30080)
    assert txt == "k8s=lab/apps/nginx/30080"
    assert maybe_owner(Entry(txt=txt)) == ("lab", "apps", "nginx", "30080")


# --- issue 13: bounded, cached decoding ---------------------------------------------------


def test_bomb_of_empty_objects_is_one_error_fast() -> None:
    """The review's bomb: 1 MiB of [{},{},...] (128 characters of tag)."""
    import time

    from serfbridge import cloudy_codec as cloudy

    bomb = recipe_encode(b"[" + b"{}," * 349_525 + b"{}]")
    assert len(bomb) < 200
    start = time.perf_counter()
    rows, warnings = decode_members([("m1", "alive", {SERVICES_TAG: bomb})])
    assert time.perf_counter() - start < 1.0
    assert rows == [] and len(warnings) == 1 and "expands beyond" in warnings[0]
    cloudy._CACHE.clear()


def test_too_many_items_and_too_many_problems_are_bounded() -> None:
    from serfbridge.cloudy import MAX_ITEMS, MAX_PROBLEMS

    many = recipe_encode(b"[" + b"{}," * MAX_ITEMS + b"{}]")
    with pytest.raises(ServicesDecodeError, match="more than"):
        decode_services(many)
    odd = recipe_encode(b"[" + b"{}," * 20 + b"{}]")
    result = decode_services_report(odd)
    assert len(result.entries) == 21
    assert len(result.problems) == MAX_PROBLEMS + 1
    assert result.problems[-1] == f"and {21 * 7 - MAX_PROBLEMS} more problems"


def test_oversized_value_is_refused_before_decoding() -> None:
    from serfbridge.cloudy import MAX_ENCODED_CHARS

    with pytest.raises(ServicesDecodeError, match="characters long"):
        decode_services("A" * (MAX_ENCODED_CHARS + 1))


def test_decoding_is_cached_by_value(monkeypatch) -> None:
    from serfbridge import cloudy_codec as cloudy

    calls = []
    real = cloudy._unpack
    monkeypatch.setattr(cloudy, "_unpack", lambda v: calls.append(v) or real(v))
    value = recipe_encode(b'[{"s":"cached","d":"x","m":"","i":"","p":"9","e":"","t":""}]\n')
    bad = value[:-8]
    for _ in range(3):
        assert decode_services(value)[0].type == "cached"
        with pytest.raises(ServicesDecodeError):
            decode_services(bad)
    assert calls == [value, bad]


def test_decoded_entries_keep_their_json_text_and_encode_back_from_it() -> None:
    obj = '{"d":"it\\u0027s \\ud800","s":"x","p":1}'
    [entry] = decode_services(recipe_encode(f"[ {obj} ]\n".encode()))
    assert entry.raw == obj and entry.description == "it's \ud800"
    assert _unpack_text(encode_services([entry])) == f"[{obj}]\n"
    changed = dataclasses.replace(entry, port="2")  # a changed entry is ours: checked again
    assert changed.raw == ""
    with pytest.raises(UsageError):
        encode_services([changed])


def _unpack_text(value: str) -> str:
    return bz2.decompress(base64.b64decode(value)).decode()


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f", "\u061c"])
def test_publishing_refuses_bidi_controls(char: str) -> None:
    with pytest.raises(UsageError, match="bidirectional"):
        make_entry(description=f"evil{char}gpj.exe", type="web", port=80)


def test_search_json_is_always_valid_utf8() -> None:
    rows = [{"node_id": "n\udcff", "s": "x", "d": "\ud800", "m": "ok\u00e9"}]
    line = search_json(rows)
    line.encode("utf-8")  # strict: no lone surrogates left
    assert json.loads(line) == [{"node_id": "n\ufffd", "s": "x", "d": "\ufffd", "m": "ok\u00e9"}]
