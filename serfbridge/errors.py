"""The one exception tree of serfbridge.

Every module translates the errors of the libraries it wraps (msgpack, sockets,
`kubernetes`) into these classes at its boundary, with ``raise ... from exc`` so the
cause stays chained. Loops decide whether to retry from ``temporary``; the CLI maps
``UsageError`` (and its kin) to exit code 2 and everything else to 1.

This module must not import anything from the rest of the package.
"""

from __future__ import annotations


class SerfBridgeError(Exception):
    """Root of every error serfbridge raises on purpose."""

    #: True when the same operation may succeed later (outage, timeout, conflict).
    temporary: bool = False
    #: True when the cause is the caller's input (CLI exit code 2).
    bad_input: bool = False


class UsageError(SerfBridgeError):
    """Invalid input from the user: a bad k=v, a regex that does not compile, a bad port."""

    bad_input = True


class ConfigError(SerfBridgeError):
    """Invalid or unreadable configuration (flags, env, config file, kubeconfig)."""

    bad_input = True


class BudgetError(UsageError):
    """A tag set would exceed the agent's meta limit; it was refused before sending.

    ``size`` and ``limit`` are in bytes, counted as Serf counts them.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


# --- Serf RPC -------------------------------------------------------------------------


class RPCError(SerfBridgeError):
    """Anything that went wrong talking to a Serf agent."""


class ProtocolError(RPCError):
    """The peer broke the RPC protocol (garbage bytes, unexpected message shapes)."""


class TransportError(RPCError):
    """The connection could not be made, or it dropped."""

    temporary = True


class UntrustedAgent(RPCError):
    """The RPC port on this host is held by a user the agent does not run as (a squatter
    while the agent restarts): nothing, the key least of all, was sent. Temporary: the
    real agent may get its port back."""

    temporary = True


class RPCTimeout(RPCError, TimeoutError):
    """The agent did not answer a request in time."""

    temporary = True


class AgentError(RPCError):
    """The agent answered with an error string; ``agent_text`` is its exact text."""

    def __init__(self, agent_text: str, *, command: str = "") -> None:
        where = f"{command}: " if command else ""
        super().__init__(f"{where}agent said: {agent_text}")
        self.agent_text = agent_text
        self.command = command


class AuthError(AgentError):
    """The agent refused our RPC auth key, or needs one we did not give."""

    def __init__(self, agent_text: str, *, command: str = "") -> None:
        super().__init__(agent_text, command=command)
        hint = ""
        if agent_text == "Authentication required":
            hint = (
                " (the agent has an RPC auth key:"
                " give --rpc-auth, --rpc-auth-file or SERF_RPC_AUTH)"
            )
        # The key itself never appears here: only the agent's text does.
        self.args = (f"authentication failed: agent said: {agent_text}{hint}",)


class HandshakeError(AgentError):
    """The agent refused the handshake (unsupported IPC version)."""


class UnsupportedCommand(AgentError):
    """The agent does not know the command (it closes the connection after this)."""


class InvalidFilter(AgentError):
    """A stream filter the agent refused."""

    bad_input = True


class TagsTooLarge(AgentError):
    """The agent refused a tag set as oversized (we check first; this is a backstop)."""


class QueryError(AgentError):
    """A query or respond the agent refused (size, name, deadline, duplicate)."""


class KeyringError(AgentError):
    """A key operation failed on some nodes (``N/M nodes reported failure``)."""


# --- the handler socket ---------------------------------------------------------------


class HandoffError(SerfBridgeError):
    """A hand-over request that breaks the handler-socket protocol (``handoff.py``)."""


# --- Kubernetes -----------------------------------------------------------------------


class KubeError(SerfBridgeError):
    """Anything that went wrong talking to the Kubernetes API."""


class KubeNotFound(KubeError):
    """The object does not exist."""


class KubeConflict(KubeError):
    """A write lost a race (409); read again and retry."""

    temporary = True


class KubeForbidden(KubeError):
    """RBAC refused the request; the message names the verb and resource."""


class KubeUnavailable(KubeError):
    """The API server cannot be reached or is not ready."""

    temporary = True


# --- Cloudy services codec ------------------------------------------------------------


class ServicesDecodeError(SerfBridgeError):
    """A `services` tag value (from any member) could not be decoded."""


# --- our own daemon -------------------------------------------------------------------


class DaemonReplyError(SerfBridgeError):
    """What answered on the daemon's HTTP address is not a daemon's /status (exit 1)."""


# --- kube watch errors (kube helper) ---------------------------------------------------


class Expired(KubeError):
    """410 Gone: the resourceVersion is too old (compacted); relist."""

    temporary = True
