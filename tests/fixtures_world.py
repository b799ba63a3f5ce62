"""The ``world`` fixture: the session apiserver + real serf agents + Nodes + daemons."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tests.lab.bridges import World

_PREFIX = itertools.count(1)


@pytest.fixture
def world(kube_apiserver, request) -> Iterator[Callable[..., World]]:
    """``world(n, **kw)`` -> a started World on the shared apiserver, with unique Node names.
    On failure the daemons' and agents' log tails are attached to the report."""
    worlds: list[World] = []

    def start(n: int = 3, **kw) -> World:
        w = World(n, apiserver=kube_apiserver, node_prefix=f"w{next(_PREFIX)}k", **kw)
        worlds.append(w)
        w.__enter__()
        return w

    yield start
    report = getattr(request.node, "rep_call", None)
    for w in worlds:
        if report is not None and report.failed:
            print(w.logs(60))
        w.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
