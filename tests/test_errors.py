"""The exception tree (``errors``): retry as a value on every class, and one tree only.

A loop retries an error after ``retry_after`` seconds, or stops and reports it when that
is None: forbidden, auth, protocol and configuration errors must never be retried in a
loop, and an outage or a timeout must be.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import serfbridge
from serfbridge import errors
from serfbridge.errors import (
    AgentError,
    AuthError,
    BudgetError,
    ConfigError,
    HandoffError,
    HandshakeError,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnavailable,
    PermanentError,
    ProtocolError,
    RPCError,
    RPCTimeout,
    SerfBridgeError,
    TemporaryError,
    TransportError,
    UntrustedAgent,
    UsageError,
)


def build(cls: type[SerfBridgeError]) -> SerfBridgeError:
    if issubclass(cls, AgentError):
        return cls("Permission denied", command="tags")
    if cls is BudgetError:
        return cls("too big", size=600, limit=512)
    return cls("it broke")


@pytest.mark.parametrize(
    ("cls", "temporary"),
    [
        pytest.param(TransportError, True, id="transport"),
        pytest.param(RPCTimeout, True, id="rpc-timeout"),
        pytest.param(UntrustedAgent, True, id="untrusted-agent-may-get-its-port-back"),
        pytest.param(KubeUnavailable, True, id="kube-unavailable"),
        pytest.param(KubeConflict, True, id="kube-conflict"),
        pytest.param(KubeForbidden, False, id="kube-forbidden"),
        pytest.param(KubeNotFound, False, id="kube-not-found"),
        pytest.param(KubeError, False, id="kube-other-http-status"),
        pytest.param(AuthError, False, id="auth"),
        pytest.param(HandshakeError, False, id="handshake"),
        pytest.param(AgentError, False, id="agent-refused"),
        pytest.param(ProtocolError, False, id="protocol"),
        pytest.param(RPCError, False, id="rpc-other"),
        pytest.param(ConfigError, False, id="config"),
        pytest.param(UsageError, False, id="usage"),
        pytest.param(BudgetError, False, id="budget"),
        pytest.param(HandoffError, False, id="handoff"),
    ],
)
def test_retry_is_a_value_on_each_class(cls, temporary) -> None:
    exc = build(cls)
    assert exc.temporary is temporary
    if temporary:
        assert isinstance(exc, TemporaryError) and exc.retry_after is not None
        assert exc.retry_after >= 0
    else:
        assert exc.retry_after is None


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(KubeForbidden, id="kube-forbidden"),
        pytest.param(AuthError, id="auth"),
        pytest.param(ProtocolError, id="protocol"),
        pytest.param(ConfigError, id="config"),
    ],
)
def test_the_errors_that_must_stop_a_loop_say_so_explicitly(cls) -> None:
    assert issubclass(cls, PermanentError)


def test_rpc_timeout_is_still_a_timeout_error() -> None:
    assert isinstance(build(RPCTimeout), TimeoutError)


def exceptions_defined_in(package: ModuleType) -> set[str]:
    """Dotted names of the exception classes each module of ``package`` defines."""
    found = set()
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):
            continue  # running it is the command line
        module = importlib.import_module(info.name)
        found |= {
            f"{info.name}.{name}"
            for name, obj in vars(module).items()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == info.name
        }
    return found


def test_every_exception_of_the_package_lives_in_errors_py() -> None:
    outside = {
        n for n in exceptions_defined_in(serfbridge) if not n.startswith("serfbridge.errors.")
    }
    assert outside == set()
    ours = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and obj.__module__ == errors.__name__
    ]
    assert ours and all(issubclass(obj, SerfBridgeError) for obj in ours)  # one tree


def test_the_test_lab_has_one_error_tree_of_its_own() -> None:
    import tests.lab
    from tests.lab import errors as lab_errors

    found = exceptions_defined_in(tests.lab)
    assert found == {
        f"tests.lab.errors.{n}"
        for n in ("LabError", "MissingComponent", "PortTaken", "MachineError")
    }
    assert not issubclass(lab_errors.LabError, SerfBridgeError)  # never caught as ours
