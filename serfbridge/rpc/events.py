"""The events the protocol core hands out, and the agent's error strings as our types.

Frozen values only: ``protocol.Connection.next_events()`` returns them, the I/O shell
(``rpc.wire``, ``rpc.hub``, ``rpc.client``) routes them. Pure: no I/O, no wire keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from serfbridge.errors import (
    AgentError,
    AuthError,
    HandshakeError,
    InvalidFilter,
    KeyringError,
    QueryError,
    TagsTooLarge,
    UnsupportedCommand,
)
from serfbridge.rpc.models import ReplyBody, StreamItem


@dataclass(frozen=True)
class Ready:
    """Handshake (and auth) succeeded; held-back requests are now in ``data_to_send()``."""


@dataclass(frozen=True)
class Reply:
    """The reply to one request. ``error`` is the agent's text ("" on success)."""

    seq: int
    command: str
    error: str
    body: ReplyBody = None

    def raise_for_error(self) -> None:
        if self.error:
            raise agent_error(self.command, self.error)


@dataclass(frozen=True)
class StreamRecord:
    seq: int
    item: StreamItem


@dataclass(frozen=True)
class StreamEnded:
    """A query's ``done`` record arrived: nothing more will come for this Seq."""

    seq: int


Event = Ready | Reply | StreamRecord | StreamEnded


_BY_TEXT: dict[str, type[AgentError]] = {
    "Authentication required": AuthError,
    "Invalid authentication token": AuthError,
    "Unsupported IPC version": HandshakeError,
    "Handshake already performed": HandshakeError,
    "Handshake required": HandshakeError,
    "Unsupported command": UnsupportedCommand,
    "Invalid event filter": InvalidFilter,
}


def agent_error(command: str, text: str) -> AgentError:
    """Map an agent's error string to our exception type, keeping its exact text (§6)."""
    kind = _BY_TEXT.get(text) or _kind_by_context(command, text)
    return kind(text, command=command)


def _kind_by_context(command: str, text: str) -> type[AgentError]:
    """The type for texts that vary (a limit, a query id): by prefix, else by command."""
    if text.startswith("Encoded length of tags exceeds limit"):
        return TagsTooLarge
    if command in ("query", "respond") or text.startswith("No pending queries"):
        return QueryError
    if command.endswith("-key") or command == "list-keys":
        return KeyringError
    return AgentError
