"""The import direction in the lab (issue 15): Cloudy entries on plain agents, and the
objects the apiserver holds in an import namespace.

Role: test and bench infrastructure for ``tests/test_imports.py`` and
``bench/bench_imports.py``; the product never imports it. Two parts, next to the model in
``tests.lab.import_model`` (what the spec says the namespace should hold):

* gossip: ``publish`` sets a member's ``services`` tag the way avahi-ps does (the product's
  own Cloudy encoder, over raw RPC), ``gossip`` reads every member's entries back;
* truth: ``imported_objects`` lists the Services and EndpointSlices carrying a cluster's
  ``<P>/imported-by`` marker, reduced to the fields the spec fixes, in the model's shape;
  ``apiserver_writes`` counts the writes the apiserver served.

Must not: import pytest, or call the product's import planner.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import ssl
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from serfbridge import cloudy, kube
from serfbridge.errors import KubeError, KubeNotFound, ServicesDecodeError
from tests.lab.apiserver import LabApiServer
from tests.lab.errors import LabError
from tests.lab.import_model import (
    MANAGED_BY,
    MANAGED_BY_VALID,
    SERVICE_NAME,
    Expected,
    Gossiped,
    Objects,
    P,
)
from tests.lab.serfagents import SerfAgent, raw_request

_WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
#: What ``spec_bodies`` writes for managed-by (a valid value naming serfbridge).
MANAGED_BY_WRITTEN = "serfbridge.io"
_NAMES = itertools.count(1)


# --- gossip --------------------------------------------------------------------------------


def publish(agent: SerfAgent, entries: Sequence[cloudy.Entry]) -> None:
    """Set ``agent``'s ``services`` tag to exactly ``entries``; none deletes the tag."""
    body: dict[str, Any] = {"Tags": {}, "DeleteTags": []}
    if entries:
        body["Tags"] = {cloudy.SERVICES_TAG: cloudy.encode_services(entries)}
    else:
        body["DeleteTags"] = [cloudy.SERVICES_TAG]
    error, _ = raw_request(agent.rpc_addr, "tags", body=body, timeout=10.0)
    if error:
        raise AssertionError(f"tags on {agent.name}: {error}")


def set_raw_services(agent: SerfAgent, value: str) -> None:
    """A ``services`` tag that is not ours to encode (hostile or broken input)."""
    body = {"Tags": {cloudy.SERVICES_TAG: value}, "DeleteTags": []}
    error, _ = raw_request(agent.rpc_addr, "tags", body=body, timeout=10.0)
    if error:
        raise AssertionError(f"tags on {agent.name}: {error}")


def gossip(viewer: SerfAgent) -> dict[str, Gossiped]:
    """Every member ``viewer`` knows, with its decoded ``services`` entries."""
    result = {}
    for member in viewer.members():
        value = (member.get("Tags") or {}).get(cloudy.SERVICES_TAG)
        entries: list[cloudy.Entry] = []
        broken = False
        if value:
            try:
                entries = cloudy.decode_services(value)
            except ServicesDecodeError:
                broken = True
        result[member["Name"]] = Gossiped(member["Status"], tuple(entries), broken)
    return result


# --- the truth -------------------------------------------------------------------------------


def slices_base(client: kube.KubeClient) -> str:
    """``/apis/discovery.k8s.io/<version>``: the version the server prefers (v1beta1 on 1.20)."""
    group = client.request("GET", "/apis/discovery.k8s.io", verb="get", resource="apigroups")
    return "/apis/" + group["preferredVersion"]["groupVersion"]


def list_in(client: kube.KubeClient, ns: str, kind: str) -> list[dict[str, Any]]:
    """Every Service (``kind`` "services") or EndpointSlice ("endpointslices") in ``ns``."""
    base = "/api/v1" if kind == "services" else slices_base(client)
    path = f"{base}/namespaces/{ns}/{kind}"
    reply = client.request("GET", path, verb="list", resource=kind, namespace=ns)
    return list(reply.get("items") or ())


def _ours(meta: Mapping[str, Any], key: str, cluster: str, prefix: str) -> bool:
    return bool((meta.get(key) or {}).get(f"{prefix}/imported-by") == cluster)


def _keys(d: Mapping[str, str] | None, prefix: str) -> dict[str, str]:
    wanted = (f"{prefix}/", SERVICE_NAME, MANAGED_BY)
    return {k: v for k, v in (d or {}).items() if k.startswith(wanted)}


def imported_objects(
    client: kube.KubeClient, ns: str, *, cluster: str = "lab", prefix: str = P
) -> Objects:
    """What ``ns`` holds with ``cluster``'s marker, as ``expected_objects`` shapes it."""
    services = {}
    for svc in list_in(client, ns, "services"):
        meta, spec = svc["metadata"], svc["spec"]
        if _ours(meta, "labels", cluster, prefix):
            services[meta["name"]] = {
                "labels": _keys(meta.get("labels"), prefix),
                "annotations": _keys(meta.get("annotations"), prefix),
                "type": spec.get("type"),
                "selector": spec.get("selector") or {},
                "ports": [_service_port(p) for p in spec.get("ports") or ()],
            }
    slices = {}
    for item in list_in(client, ns, "endpointslices"):
        meta = item["metadata"]
        if _ours(meta, "labels", cluster, prefix):
            slices[meta["name"]] = _slice_of(item, prefix)
    return {"services": services, "slices": slices}


def _service_port(p: Mapping[str, Any]) -> dict[str, Any]:
    return {k: p.get(k) for k in ("name", "port", "targetPort", "protocol")}


def _slice_of(item: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    meta = item["metadata"]
    text = (meta.get("annotations") or {}).get(f"{prefix}/sources", "null")
    try:
        sources = json.loads(text)
    except ValueError:
        sources = f"not JSON: {text!r}"
    labels = _keys(meta.get("labels"), prefix)
    value = labels.get(MANAGED_BY, "")
    if _LABEL_VALUE.fullmatch(value) and len(value) <= 63 and "serfbridge" in value:
        labels[MANAGED_BY] = MANAGED_BY_VALID
    return {
        "labels": labels,
        "addressType": item.get("addressType"),
        "ports": [
            {k: p.get(k) for k in ("name", "port", "protocol")} for p in item.get("ports") or ()
        ],
        "endpoints": [
            [list(e.get("addresses") or ()), (e.get("conditions") or {}).get("ready")]
            for e in item.get("endpoints") or ()
        ],
        "sources": sources,
    }


def versions(client: kube.KubeClient, ns: str) -> dict[str, str]:
    """``kind/name`` -> resourceVersion of every Service and EndpointSlice in ``ns``."""
    return {
        f"{kind}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for kind in ("services", "endpointslices")
        for o in list_in(client, ns, kind)
    }


def apiserver_writes(lab: LabApiServer) -> int:
    """Writes (POST/PUT/PATCH/DELETE) on Services and EndpointSlices the apiserver has
    served to JSON clients, from its own ``apiserver_request_total``: unlike a
    resourceVersion, this counts a PUT that changed nothing, too. The apiserver's own
    controllers speak protobuf and are left out."""
    request = urllib.request.Request(
        lab.url + "/metrics", headers={"Authorization": f"Bearer {lab.admin_token}"}
    )
    context = ssl.create_default_context(cafile=str(lab.ca_file))
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        text = reply.read().decode()
    total = 0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if (
            labels.get("resource") in ("services", "endpointslices")
            and labels.get("verb") in _WRITE_VERBS
            and "protobuf" not in labels.get("contentType", "")
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# --- set-up ------------------------------------------------------------------------------------


def make_namespace(client: kube.KubeClient, prefix: str) -> str:
    """A new namespace with a unique name (the operator creates the import namespace)."""
    name = f"{prefix}-{next(_NAMES)}-{int(time.time() * 1000) % 1000000}"
    ensure_namespace(client, name)
    return name


#: The imports' RBAC as shipped: a Namespace ``cloudy`` and a Role bound there.
IMPORTS_RBAC = Path(__file__).resolve().parents[2] / "deploy" / "imports" / "rbac.yaml"


def grant_imports(lab: LabApiServer, ns: str) -> None:
    """Apply ``deploy/imports/rbac.yaml`` for the import namespace ``ns``: the shipped
    manifest with its namespace ``cloudy`` changed to ``ns`` and nothing else, which is what
    the operations guide tells an operator who sets ``--import-namespace``."""
    docs = [d for d in yaml.safe_load_all(IMPORTS_RBAC.read_text()) if d]
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == "Namespace":
            meta["name"] = ns
        else:
            assert meta["namespace"] == "cloudy", meta
            meta["namespace"] = ns
    applied = lab.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    if applied.returncode != 0:
        raise LabError(f"kubectl apply of the imports RBAC for {ns}: {applied.stderr}")


def ensure_namespace(client: kube.KubeClient, name: str) -> None:
    with contextlib.suppress(KubeError):  # 409: it exists already
        client.request(
            "POST",
            "/api/v1/namespaces",
            verb="create",
            resource="namespaces",
            body={"metadata": {"name": name}},
        )


def delete_marked(client: kube.KubeClient, ns: str, *, prefix: str = P) -> None:
    """Delete every object in ``ns`` with any cluster's import marker (test clean-up)."""
    for kind in ("endpointslices", "services"):
        base = "/api/v1" if kind == "services" else slices_base(client)
        for item in list_in(client, ns, kind):
            if f"{prefix}/imported-by" in (item["metadata"].get("labels") or {}):
                with contextlib.suppress(KubeNotFound):
                    client.request(
                        "DELETE",
                        f"{base}/namespaces/{ns}/{kind}/{item['metadata']['name']}",
                        verb="delete",
                        resource=kind,
                        namespace=ns,
                    )


def import_args(ns: str | None = None, *extra: str) -> list[str]:
    """The daemon's (and ``sync``'s) import flags; no ``ns``: the default namespace."""
    return ["--import", *(["--import-namespace", ns] if ns else []), *extra]


def spec_bodies(want: Expected) -> list[tuple[str, dict[str, Any]]]:
    """(kind, body) for every object in ``want``, written as the spec describes them: the
    lab's self-check that ``imported_objects`` reads back what ``expected_objects`` means."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name, svc in want.services.items():
        meta = {"name": name, "labels": svc["labels"], "annotations": svc["annotations"]}
        out.append(("services", {"metadata": meta, "spec": {"type": "ClusterIP",
                                                             "ports": svc["ports"]}}))  # fmt: skip
    for name, view in want.slices.items():
        endpoints = [{"addresses": a, "conditions": {"ready": r}} for a, r in view["endpoints"]]
        sources = json.dumps(view["sources"], separators=(",", ":"))
        labels = {**view["labels"], MANAGED_BY: MANAGED_BY_WRITTEN}
        meta = {"name": name, "labels": labels,
                "annotations": {f"{P}/sources": sources}}  # fmt: skip
        body = {"metadata": meta, "addressType": view["addressType"], "ports": view["ports"],
                "endpoints": endpoints}  # fmt: skip
        out.append(("endpointslices", body))
    return out


def create_all(client: kube.KubeClient, ns: str, bodies: Sequence[tuple[str, Any]]) -> None:
    """POST each (kind, body) into ``ns`` as admin."""
    for kind, body in bodies:
        base = "/api/v1" if kind == "services" else slices_base(client)
        path = f"{base}/namespaces/{ns}/{kind}"
        client.request("POST", path, verb="create", resource=kind, namespace=ns, body=body)
