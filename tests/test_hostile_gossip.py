"""Issue 13 with real agents, real bridges and the real apiserver: a hostile gossip member.

* an impostor (a plain agent, no Node, no bridge) gossips ``k8s=<cluster>/<node>`` under a
  name that sorts first: the real Node follows its real member, and nothing of the
  impostor ever lands on it;
* foreign entries that would fail our own checks (a ``'`` sent as ``\\u0027``, a lone
  surrogate) sit in agents' ``services`` lists: every bridge still publishes, keeps them
  byte for byte, and stays ready.
"""

from __future__ import annotations

import base64
import bz2
import re
import time

import pytest

from serfbridge.rpc.client import SerfClient
from tests.lab.bridges import World
from tests.lab.serfagents import AgentSpec
from tests.test_to_serf import (
    agent_tags,
    create_service,
    delete_service,
    make_namespace,
    port_spec,
    service_body,
    set_raw_tags,
)

pytestmark = pytest.mark.integration
P = "serfbridge.io"


def labels(w: World, node: str) -> dict[str, str]:
    return w.node_metadata(node)[0]


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} ([0-9.e+]+)$", text, re.M)
    return float(match[1]) if match else 0.0


def test_impostor_claiming_a_node_never_lands_on_it(world) -> None:
    w: World = world(3)
    k3 = w.nodes[2]
    w.start_bridges()
    w.wait_for(
        lambda: all(labels(w, n).get(f"{P}/serf-status") == "alive" for n in w.nodes),
        what="alive labels on every node",
    )
    impostor = w.serf.add_agent(AgentSpec("0000-impostor"))  # sorts before serf-*
    with SerfClient(impostor.rpc_addr) as c:
        c.tags({"k8s": f"lab/{k3}", "role": "evil"})

    def ignored_everywhere() -> bool:
        for bridge in w.bridges.values():
            _, text = bridge.get("/metrics")
            reason = "k8s tag claims a Node it cannot be verified for"
            if metric(text, "serfbridge_gossip_rejects_total", reason=reason) < 1:
                return False
        return True

    w.wait_for(ignored_everywhere, timeout=30, what="every bridge counts the claim")
    assert all("ignored unverifiable k8s claims" in b.log_text() for b in w.bridges.values())
    assert labels(w, k3)[f"{P}/serf-status"] == "alive"
    assert f"{P}/tag.role" not in labels(w, k3)
    assert w.node_metadata(k3)[1][f"{P}/serf-member"] == f"serf-{k3}"

    w.agent_for(k3).kill()  # the real member fails; the impostor is still alive
    w.wait_for(lambda: labels(w, k3).get(f"{P}/serf-status") == "failed", timeout=40, what="failed")
    annotations = w.node_metadata(k3)[1]
    assert annotations[f"{P}/serf-member"] == f"serf-{k3}"
    assert annotations[f"{P}/serf-recorded-by"] == k3  # the Node's own record, kept
    assert f"{P}/tag.role" not in labels(w, k3)

    impostor.terminate()  # the impostor stops too (SIGTERM: it goes `failed`)
    w.serf.wait_for(
        lambda: w.serf.statuses(w.agent_for(w.nodes[0])).get("0000-impostor") != "alive",
        timeout=40,
        what="the impostor stopped",
    )
    time.sleep(3)  # several passes of every bridge
    final_labels, final_annotations = w.node_metadata(k3)
    assert final_labels[f"{P}/serf-status"] == "failed"
    assert f"{P}/tag.role" not in final_labels
    assert final_annotations[f"{P}/serf-member"] == f"serf-{k3}"
    assert "impostor" not in final_annotations[f"{P}/serf-tags"]


QUOTE = (
    '{"s":"serf","d":"it\\u0027s_mine","m":"x.guifi.local","i":"10.0.0.9","p":"5000","e":"","t":""}'
)
SURROGATE = '{"s":"web","d":"bad\\ud800","m":"y.guifi.local","i":"10.0.0.8","p":"80","e":"","t":""}'


def raw_list(value: str) -> str:
    return bz2.decompress(base64.b64decode(value)).decode()


def test_foreign_entries_that_fail_our_checks_never_stop_publishing(world) -> None:
    w: World = world(2)
    k1, k2 = w.nodes
    ns = make_namespace(w, "hostile")
    for node, obj in ((k1, QUOTE), (k2, SURROGATE)):
        set_raw_tags(w.agent_for(node), {"services": base64.b64encode(
            bz2.compress(f"[{obj}]\n".encode(), 9)).decode()})  # fmt: skip
    w.start_bridges(args=["--namespace", ns])  # ready: every pass succeeded
    create_service(w, ns, service_body("web", [port_spec("http", 80)]))
    try:
        _check_published_next_to_foreign(w, ns)
    finally:  # the apiserver is shared: later tests' bridges (all namespaces) must not see it
        delete_service(w, ns, "web")


def _check_published_next_to_foreign(w: World, ns: str) -> None:
    k1, k2 = w.nodes

    def published() -> bool:
        return all(f"k8s=lab/{ns}/web/80" in raw_list(agent_tags(w.agent_for(n)).get(
            "services", "")) for n in w.nodes)  # fmt: skip

    w.wait_for(published, timeout=30, what="our entry next to the foreign ones")
    assert raw_list(agent_tags(w.agent_for(k1))["services"]).startswith(f"[{QUOTE},")
    assert raw_list(agent_tags(w.agent_for(k2))["services"]).startswith(f"[{SURROGATE},")
    for bridge in w.bridges.values():
        status, body = bridge.get("/readyz")
        assert status == 200, body
        assert "to-serf pass failed" not in bridge.log_text()
