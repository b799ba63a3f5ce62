"""API JSON -> plain data (``kube_json``), and the Event body: no apiserver needed."""

from __future__ import annotations

import pytest

from serfbridge.kube_json import (
    COMPONENT,
    event_body,
    object_key,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from serfbridge.kubemodels import NodeInfo, ServicePort, SliceEndpoint

NODE = {
    "metadata": {"name": "k1", "uid": "u1", "labels": {"a": "1"}, "resourceVersion": "7"},
    "status": {
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        "conditions": [{"type": "Ready", "status": "True"}],
    },
    "spec": {"unschedulable": True},
}


@pytest.mark.parametrize(
    ("obj", "field", "expected"),
    [
        pytest.param(NODE, "addresses", (("InternalIP", "10.0.0.1"),), id="addresses"),
        pytest.param(NODE, "ready", True, id="ready"),
        pytest.param(NODE, "unschedulable", True, id="unschedulable"),
        pytest.param(NODE, "resource_version", "7", id="resource-version"),
        pytest.param({"metadata": {"name": "k"}}, "ready", False, id="no-status-not-ready"),
        pytest.param({"metadata": {"name": "k"}}, "annotations", {}, id="no-annotations"),
        pytest.param(
            {
                "metadata": {"name": "k"},
                "status": {"conditions": [{"type": "Ready", "status": "False"}]},
            },
            "ready",
            False,
            id="ready-false",
        ),
    ],
)
def test_parse_node(obj, field, expected) -> None:
    assert getattr(parse_node(obj), field) == expected


def test_resource_version_does_not_count_as_a_change() -> None:
    newer = {**NODE, "metadata": {**NODE["metadata"], "resourceVersion": "8"}}
    assert parse_node(NODE) == parse_node(newer)


@pytest.mark.parametrize(
    ("spec", "status", "ports", "lb_ips"),
    [
        pytest.param({}, {}, (), (), id="empty"),
        pytest.param(
            {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            {},
            (ServicePort("http", 80, 30080, "TCP"),),
            (),
            id="nodeport-default-tcp",
        ),
        pytest.param(
            {"ports": [{"port": 53, "protocol": "UDP"}]},
            {},
            (ServicePort("", 53, None, "UDP"),),
            (),
            id="udp-no-nodeport",
        ),
        pytest.param(
            {},
            {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "lb.example"}]}},
            (),
            ("1.2.3.4", "lb.example"),
            id="ingress-ip-or-hostname",
        ),
    ],
)
def test_parse_service(spec, status, ports, lb_ips) -> None:
    svc = parse_service(
        {"metadata": {"namespace": "ns", "name": "s"}, "spec": spec, "status": status}
    )
    assert (svc.ports, svc.load_balancer_ips) == (ports, lb_ips)
    assert svc.type == spec.get("type", "ClusterIP")
    assert object_key(svc) == "ns/s"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        pytest.param(
            {"addresses": ["10.1.0.1"], "nodeName": "k1"},
            SliceEndpoint(("10.1.0.1",), "k1", True),
            id="v1-node-name",
        ),
        pytest.param(
            {"topology": {"kubernetes.io/hostname": "k2"}},
            SliceEndpoint((), "k2", True),
            id="v1beta1-topology",
        ),
        pytest.param(
            {"conditions": {"ready": False}}, SliceEndpoint((), None, False), id="not-ready"
        ),
        pytest.param({"conditions": {}}, SliceEndpoint((), None, True), id="unset-is-ready"),
    ],
)
def test_parse_endpoint_slice(endpoint, expected) -> None:
    obj = {
        "metadata": {
            "namespace": "ns",
            "name": "s-1",
            "labels": {"kubernetes.io/service-name": "s"},
        },
        "endpoints": [endpoint],
        "ports": [{"name": "http", "port": 8080}],
    }
    parsed = parse_endpoint_slice(obj)
    assert parsed.endpoints == (expected,)
    assert (parsed.service_name, parsed.ports) == ("s", (("http", 8080, "TCP"),))


def test_event_body_on_a_node() -> None:
    node = NodeInfo("k1", "u1", {}, {}, (), True)
    body = event_body(node, reason="SerfFailed", message="m", type="Normal", instance="host")
    assert body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "k1", "uid": "u1"}
    assert body["metadata"] == {"generateName": "k1."}
    assert (body["reason"], body["type"], body["reportingInstance"]) == (
        "SerfFailed",
        "Normal",
        "host",
    )
    assert body["source"] == {"component": COMPONENT}
    assert body["firstTimestamp"] == body["lastTimestamp"]
    assert object_key(node) == "k1"
