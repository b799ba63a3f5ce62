"""`serfbridge services | publish | unpublish` against real agents, in avahi-ps's format."""

from __future__ import annotations

import base64
import bz2
import json
import os

import pytest
from click.testing import CliRunner

from serfbridge import cloudy
from serfbridge.cli import cli
from serfbridge.rpc.budget import encoded_tags_size
from serfbridge.rpc.client import SerfClient
from tests.lab.serfagents import SerfCluster

pytestmark = pytest.mark.integration


def run(agent_rpc: str, *args: str):
    return CliRunner().invoke(cli, ["--rpc-addr", agent_rpc, *args], catch_exceptions=False)


def avahi_ps_tag(objects: list[dict[str, str]], quote: str = '"') -> str:
    """The reference's encoding recipe, written out literally (cloudy-avahi-ps.md §1.9)."""
    raw = "[" + ",".join(json.dumps(o, separators=(",", ":")) for o in objects) + "]\n"
    if quote == "'":
        raw = raw.replace('"', "'")
    return base64.b64encode(bz2.compress(raw.encode(), 9)).decode()


def services_on(cluster: SerfCluster, via: str) -> list[dict[str, str]]:
    result = run(cluster.agent(via).rpc_addr, "services", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_services(cluster: SerfCluster, via: str, predicate) -> list[dict[str, str]]:
    return cluster.wait_for(
        lambda: predicate(rows := services_on(cluster, via)) and rows,
        timeout=10,
        what="services view",
    )


SERF_SELF = {
    "s": "serf",
    "d": "SERF_instance_running",
    "m": "n1.guifi.local",
    "i": "127.0.0.1",
    "p": "5000",
    "e": "demo",
    "t": "",
}


def test_publish_replace_unpublish_and_foreign_entry_survives(serf3: SerfCluster) -> None:
    a = serf3.agent("n1").rpc_addr
    with SerfClient(a) as client:  # a Cloudy entry written by "avahi-ps" itself
        client.tags({"services": avahi_ps_tag([SERF_SELF])})
    published = run(
        a,
        "publish",
        "--host",
        "n1.guifi.local",
        "--microcloud",
        "demo",
        "my web",
        "kubernetes",
        "30080",
        "NodePort",
    )
    assert published.exit_code == 0, published.output
    rows = wait_services(serf3, "n2", lambda rows: len(rows) == 2)
    assert rows == [
        {"node_id": "n1", **SERF_SELF},
        {
            "node_id": "n1",
            "s": "kubernetes",
            "d": "my_web",
            "m": "n1.guifi.local",
            "i": "127.0.0.1",
            "p": "30080",
            "e": "demo",
            "t": "NodePort",
        },
    ]
    assert list(rows[1]) == ["node_id", "s", "d", "m", "i", "p", "e", "t"]

    assert run(a, "publish", "--host", "h", "other", "kubernetes", "30080").exit_code == 0
    rows = wait_services(serf3, "n3", lambda rows: any(r["d"] == "other" for r in rows))
    assert [r["d"] for r in rows] == ["SERF_instance_running", "other"]

    unchanged = run(a, "publish", "--host", "h", "other", "kubernetes", "30080")
    assert unchanged.stdout.startswith("unchanged")

    assert run(a, "unpublish", "kubernetes", "30080").exit_code == 0
    rows = wait_services(serf3, "n2", lambda rows: len(rows) == 1)
    assert rows == [{"node_id": "n1", **SERF_SELF}]  # the foreign entry, untouched
    assert run(a, "unpublish", "serf", "5000").exit_code == 0
    with SerfClient(a) as client:
        assert "services" not in client.local_tags()  # last entry gone: the tag is deleted
    assert run(a, "unpublish", "serf", "5000").stdout.startswith("not published")


def test_corrupt_tags_are_skipped_with_a_warning_naming_the_member(serf3: SerfCluster) -> None:
    good = avahi_ps_tag([SERF_SELF])
    with SerfClient(serf3.agent("n1").rpc_addr) as client:
        client.tags({"services": good})
    legacy = avahi_ps_tag([{**SERF_SELF, "d": "legacy"}], quote="'")
    with SerfClient(serf3.agent("n2").rpc_addr) as client:
        client.tags({"services": legacy})
    corrupt = {
        "garbage-base64": "!!!not base64!!!",
        "not-bzip2": base64.b64encode(b"plain text, not bzip2").decode(),
        "invalid-json": base64.b64encode(bz2.compress(b'[{"s":"x",]\n', 9)).decode(),
        "json-object": base64.b64encode(bz2.compress(b'{"s":"x"}\n', 9)).decode(),
        "random-400": base64.b64encode(os.urandom(300)).decode()[:400],
    }
    with SerfClient(serf3.agent("n3").rpc_addr) as client:
        for case, value in corrupt.items():
            client.tags({"services": value})
            serf3.wait_for(
                lambda v=value: any(
                    m["Name"] == "n3" and m["Tags"].get("services") == v
                    for m in serf3.members("n1")
                ),
                timeout=10,
            )
            result = run(serf3.agent("n1").rpc_addr, "services", "--json")
            assert result.exit_code == 0, case
            assert "'n3'" in result.stderr, case
            rows = json.loads(result.stdout)
            assert sorted(r["d"] for r in rows) == ["SERF_instance_running", "legacy"], case


def test_filters_work_unlike_avahi_ps(serf3: SerfCluster) -> None:
    with SerfClient(serf3.agent("n1").rpc_addr) as client:
        client.tags(
            {"services": avahi_ps_tag([SERF_SELF, {**SERF_SELF, "s": "Docker", "p": "8080"}])}
        )
    rows = wait_services(serf3, "n2", lambda rows: len(rows) == 2)
    assert len(rows) == 2
    by_type = json.loads(
        run(serf3.agent("n2").rpc_addr, "services", "--json", "--type", "Docker").stdout
    )
    assert [r["p"] for r in by_type] == ["8080"]
    assert (
        json.loads(run(serf3.agent("n2").rpc_addr, "services", "--json", "--host", "nobody").stdout)
        == []
    )
    table = run(serf3.agent("n2").rpc_addr, "services").stdout
    assert table.index("Docker (1)") < table.index("serf (1)")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["d", "kubernetes", "http"], "port", id="non-numeric-port"),
        pytest.param(["d", "kubernetes", "70000"], "port", id="port-out-of-range"),
        pytest.param(["it's", "kubernetes", "80"], "'", id="single-quote"),
        pytest.param(["d", "kubernetes", "80", "a&b"], "&", id="ampersand-in-txt"),
        pytest.param(["d", "kube rnetes", "80"], "type", id="space-in-type"),
    ],
)
def test_publish_bad_input_exits_2(serf_cluster, args: list[str], message: str) -> None:
    cluster = serf_cluster(1)
    result = run(cluster.agents[0].rpc_addr, "publish", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_budget_edge_agrees_with_the_agent(serf_cluster) -> None:
    cluster = serf_cluster(1)
    rpc = cluster.agents[0].rpc_addr
    entries = [SERF_SELF]
    count = 0
    with SerfClient(rpc) as client:
        client.tags({"services": avahi_ps_tag(entries)})
        while True:
            args = [
                f"svc-{count:02d}",
                "kubernetes",
                str(30000 + count),
                f"k8s=lab/default/svc-{count:02d}/{30000 + count}",
            ]
            result = run(
                rpc,
                "publish",
                "--host",
                "k8s-node1.guifi.local",
                "--ip",
                "10.139.40.51",
                "--microcloud",
                "lab",
                *args,
            )
            if result.exit_code != 0:
                break
            count += 1
        assert result.exit_code == 2
        assert "limit is 512" in result.stderr
        tags = client.local_tags()
        # What we accepted last is what the agent holds, and it is within the budget.
        assert len(cloudy.decode_services(tags["services"])) == count + 1
        assert encoded_tags_size(tags) <= 512
        # The refused list really is over the edge: the agent itself refuses it too.
        over = cloudy.upsert(
            cloudy.decode_services(tags["services"]),
            cloudy.make_entry(
                description=args[0],
                type="kubernetes",
                port=args[2],
                txt=args[3],
                host="k8s-node1.guifi.local",
                ip="10.139.40.51",
                microcloud="lab",
            ),
        )
        reply = client.call(
            "tags", {"Tags": {"services": cloudy.encode_services(over)}, "DeleteTags": []}
        )
        assert "exceeds limit of 512" in reply.error
    assert count >= 3
