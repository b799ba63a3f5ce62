"""The ``world`` fixture: the session apiserver + real serf agents + Nodes + daemons."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.apiserver import LabApiServer
from tests.lab.bridges import World

_PREFIX = itertools.count(1)


@pytest.fixture
def world(kube_apiserver, request) -> Iterator[Callable[..., World]]:
    """``world(n, **kw)`` -> a started World on the shared apiserver, with unique Node names.
    On failure the daemons' and agents' log tails are attached to the report."""
    yield from worlds_on(kube_apiserver, request)


def worlds_on(
    apiserver: LabApiServer,
    request: Any,
    *,
    after_pass: Callable[[World], None] | None = None,
    **defaults: Any,
) -> Iterator[Callable[..., World]]:
    """The ``world`` fixture's body on any apiserver; ``defaults`` go to every World.
    ``after_pass`` checks each World after a passing test, before it closes (a failed
    check fails the test's teardown)."""
    worlds: list[World] = []

    def start(n: int = 3, **kw) -> World:
        options = {**defaults, **kw}
        w = World(n, apiserver=apiserver, node_prefix=f"w{next(_PREFIX)}k", **options)
        worlds.append(w)
        w.__enter__()
        return w

    yield start
    report = getattr(request.node, "rep_call", None)
    try:
        for w in worlds:
            if report is not None and report.failed:
                print(w.logs(60))
            elif after_pass is not None:
                after_pass(w)
    finally:
        for w in worlds:
            w.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
