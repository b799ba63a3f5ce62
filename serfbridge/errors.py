"""The one exception tree of serfbridge.

Every module translates the errors of the libraries it wraps (msgpack, sockets,
`kubernetes`) into these classes at its boundary, with ``raise ... from exc`` so the
cause stays chained. Retry is a value on each class: ``retry_after`` is the seconds a
loop waits before trying again (a ``TemporaryError``), or None when trying again cannot
help (a ``PermanentError``: forbidden, auth, protocol, configuration), so the loop stops
and reports it. ``temporary`` is derived from it. The CLI maps ``UsageError`` (and its
kin) to exit code 2 and everything else to 1.

This module must not import anything from the rest of the package.
"""

from __future__ import annotations


class SerfBridgeError(Exception):
    """Root of every error serfbridge raises on purpose; permanent unless a class says."""

    #: Seconds after which the same operation may succeed (outage, timeout, conflict);
    #: None: it will not, so a loop stops retrying and reports it.
    retry_after: float | None = None
    #: True when the cause is the caller's input (CLI exit code 2).
    bad_input: bool = False

    @property
    def temporary(self) -> bool:
        """True when the same operation may succeed later (``retry_after`` is set)."""
        return self.retry_after is not None


class TemporaryError(SerfBridgeError):
    """Mixin: retrying after ``retry_after`` seconds may succeed."""

    retry_after: float | None = 0.0


class PermanentError(SerfBridgeError):
    """Mixin: retrying cannot help until something outside changes (RBAC, a key, a file)."""

    retry_after: float | None = None


class UsageError(PermanentError):
    """Invalid input from the user: a bad k=v, a regex that does not compile, a bad port."""

    bad_input = True


class ConfigError(PermanentError):
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


class ProtocolError(RPCError, PermanentError):
    """The peer broke the RPC protocol (garbage bytes, unexpected message shapes)."""


# --- RPC protocol errors: local misuse vs the peer's fault


class LocalProtocolError(ProtocolError):
    """Our own code misused the protocol core (an unknown command, a missing body, a
    failed connection used again): a bug here, never the agent's doing."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the RPC protocol: garbage bytes, a wrong shape, an unknown Seq."""


# --- end of RPC protocol errors


class TransportError(RPCError, TemporaryError):
    """The connection could not be made, or it dropped."""


class UntrustedAgent(RPCError, TemporaryError):
    """The RPC port on this host is held by a user the agent does not run as (a squatter
    while the agent restarts): nothing, the key least of all, was sent. Temporary: the
    real agent may get its port back."""


class RPCTimeout(RPCError, TemporaryError, TimeoutError):
    """The agent did not answer a request in time."""


class AgentError(RPCError, PermanentError):
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


class KubeNotFound(KubeError, PermanentError):
    """The object does not exist."""


class KubeConflict(KubeError, TemporaryError):
    """A write lost a race (409); read again and retry."""


class KubeForbidden(KubeError, PermanentError):
    """RBAC refused the request; the message names the verb and resource."""


class KubeUnavailable(KubeError, TemporaryError):
    """The API server cannot be reached or is not ready."""


# --- Cloudy services codec ------------------------------------------------------------


class ServicesDecodeError(SerfBridgeError):
    """A `services` tag value (from any member) could not be decoded."""


# --- our own daemon -------------------------------------------------------------------


class DaemonReplyError(SerfBridgeError):
    """What answered on the daemon's HTTP address is not a daemon's /status (exit 1)."""


# --- codec and config input errors ----------------------------------------------------
# Internal signals of the input checkers; each module that raises one translates it at
# its boundary (``config_rules`` into ConfigError, ``cloudy`` into ServicesDecodeError).
# They are ValueErrors too (their contract with their callers) and in the one tree, so
# one that escaped a boundary still reads as ours.


class InvalidSetting(SerfBridgeError, ValueError):
    """One setting's rule broken (``config_rules``); ``validate`` adds the setting's names."""


class GoRegexError(SerfBridgeError, ValueError):
    """Go would refuse the pattern; the text is Go's error code and the offending part."""


class NotAList(SerfBridgeError, ValueError):
    """Valid JSON, but not a list (``bounded``); ``kind`` names what it is."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not a JSON list (got {kind})")
        self.kind = kind


class TooManyItems(SerfBridgeError, ValueError):
    """The JSON list has more items than allowed; the rest was not parsed (``bounded``)."""


class LocalListUnreadable(SerfBridgeError):
    """The local ``services`` tag cannot be decoded, so a rewrite would lose entries."""


# --- kube watch errors ---------------------------------------------------


class Expired(KubeError, TemporaryError):
    """410 Gone: the resourceVersion is too old (compacted); relist."""
