"""plan_select.maybe_skip_reason: one named case per reason, in the order the checks run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from serfbridge.kubemodels import ServiceInfo, ServicePort
from serfbridge.plan_select import maybe_skip_reason
from serfbridge.plan_settings import PlanSettings

SETTINGS = PlanSettings(self_node="k1")
PUBLISH = SETTINGS.key("publish")
WEB = ServiceInfo(
    namespace="shop",
    name="web",
    uid="u1",
    type="NodePort",
    ports=(ServicePort(name="http", port=80, node_port=30080, protocol="TCP"),),
    external_traffic_policy=None,
    labels={"tier": "front"},
    annotations={},
    load_balancer_ips=(),
)


@pytest.mark.parametrize(
    ("svc", "settings", "reason"),
    [
        pytest.param(WEB, SETTINGS, None, id="eligible-by-default"),
        pytest.param(
            replace(WEB, type="LoadBalancer", annotations={PUBLISH: " TRUE "}),
            replace(SETTINGS, publish_default=False),
            None,
            id="opted-in-load-balancer",
        ),
        pytest.param(
            replace(WEB, type="ClusterIP"), SETTINGS, "type ClusterIP is never published", id="type"
        ),
        pytest.param(
            WEB,
            replace(SETTINGS, namespaces=frozenset({"other"})),
            "namespace not allowed",
            id="namespace-not-allowed",
        ),
        pytest.param(
            WEB,
            replace(SETTINGS, exclude_namespaces=frozenset({"shop"})),
            "namespace excluded",
            id="namespace-excluded",
        ),
        pytest.param(
            WEB,
            replace(SETTINGS, selector="tier=back"),
            "label selector does not match",
            id="selector",
        ),
        pytest.param(
            replace(WEB, annotations={PUBLISH: "yes"}),
            SETTINGS,
            f"{PUBLISH} must be true or false, got 'yes'",
            id="bad-annotation",
        ),
        pytest.param(
            replace(WEB, annotations={PUBLISH: "false"}), SETTINGS, "not opted in", id="opted-out"
        ),
        pytest.param(
            WEB, replace(SETTINGS, publish_default=False), "not opted in", id="default-off"
        ),
        pytest.param(replace(WEB, ports=()), SETTINGS, "no ports", id="no-ports"),
        # The settings' scope is checked before what the Service itself asks for.
        pytest.param(
            replace(WEB, type="ExternalName", annotations={PUBLISH: "yes"}, ports=()),
            replace(SETTINGS, exclude_namespaces=frozenset({"shop"})),
            "type ExternalName is never published",
            id="first-reason-wins",
        ),
        pytest.param(
            replace(WEB, annotations={PUBLISH: "yes"}, ports=()),
            replace(SETTINGS, exclude_namespaces=frozenset({"shop"})),
            "namespace excluded",
            id="scope-before-opt-in",
        ),
    ],
)
def test_maybe_skip_reason(svc: ServiceInfo, settings: PlanSettings, reason: str | None) -> None:
    assert maybe_skip_reason(svc, settings) == reason
