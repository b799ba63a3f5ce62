"""The Serf RPC protocol as a pure state machine: bytes in, events out, no sockets.

Like h11's ``Connection``: the caller feeds what it read with ``receive_data()``, takes
events from ``next_events()``, and writes whatever ``data_to_send()`` returns. This
module owns every rule of ``reference/serf-rpc.md`` §1-§6:

* the Seq counter (strictly increasing, never reused, §1.2) and, per Seq, what the reply
  looks like: a bare header, a header plus a body, or a stream (ack, then header+body
  records, §1);
* handshake and auth gating: requests made earlier are held back and only written once
  the handshake (and auth, when we have a key) succeeded (§1.1, §2);
* stop-then-drain: records of a stopped stream may still arrive after the ``stop`` reply;
  they keep being parsed as header+body and are dropped (§1.2);
* the ``Authentication required`` desync: a refused request's body is re-read by the
  agent as a header and answered twice, so the echo is swallowed (§1.1);
* agent error strings become typed exceptions (``agent_error``);
* every message is bounded (a fake agent on the port can send anything): at most
  ``MAX_LIST`` items in a list or map (so ``MAX_LIST`` members per reply), ``MAX_STRING``
  bytes per string, ``MAX_MESSAGE_BYTES`` on the wire and ``MAX_MESSAGE_ITEMS`` decoded
  values per header or body. Beyond any of them the connection fails with a
  ``ProtocolError`` before the rest is decoded, so memory stays bounded too.

The wire keys ``Command``/``Seq``/``Error`` appear only here. Garbage from the peer raises
``ProtocolError`` and nothing else. Must not import socket, time or threading.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import msgpack

from serfbridge.errors import (
    AgentError,
    AuthError,
    HandshakeError,
    InvalidFilter,
    KeyringError,
    ProtocolError,
    QueryError,
    TagsTooLarge,
    UnsupportedCommand,
)
from serfbridge.rpc import models
from serfbridge.rpc.models import ReplyBody, StreamItem

IPC_VERSION = 1
_Sized = TypeVar("_Sized", list[object], dict[object, object])
#: Members per reply, and items per list or map. Serf clusters of community networks
#: have hundreds of members; thousands are rare.
MAX_LIST = 10_000
MAX_STRING = 256 * 1024  # bytes per string or binary (names, tags, payloads, log lines)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one header or body on the wire
#: Lists and maps, and their items, decoded per header or body: a full reply of
#: ``MAX_LIST`` members with their tags takes about 30 per member.
MAX_MESSAGE_ITEMS = 400_000

#: Commands whose reply is header + body, even when Error is set (§1).
_BODY_PARSERS: dict[str, Callable[[object], ReplyBody]] = {
    "join": models.parse_join,
    "members": models.parse_members,
    "members-filtered": models.parse_members,
    "stats": models.parse_stats,
    "get-coordinate": models.parse_coordinate,
    "install-key": models.parse_key_response,
    "use-key": models.parse_key_response,
    "remove-key": models.parse_key_response,
    "list-keys": models.parse_key_response,
}
#: Streaming commands: a bare ack, then header + record per item (§4, §5).
_RECORD_PARSERS: dict[str, Callable[[object], StreamItem]] = {
    "stream": models.parse_event_record,
    "monitor": models.parse_log_record,
    "query": models.parse_query_record,
}
#: Commands that take a request body; the rest must be sent without one (§1.1).
_TAKES_BODY = frozenset(
    {
        "handshake",
        "auth",
        "event",
        "force-leave",
        "join",
        "members-filtered",
        "tags",
        "stream",
        "monitor",
        "stop",
        "query",
        "respond",
        "install-key",
        "use-key",
        "remove-key",
        "get-coordinate",
    }
)
_NO_BODY = frozenset({"members", "leave", "list-keys", "stats"})
COMMANDS = _TAKES_BODY | _NO_BODY
#: Early rejections that come without a body even for body commands (§1).
_NO_BODY_ERRORS = frozenset(
    {"Handshake required", "Authentication required", "Unsupported command"}
)


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    FAILED = "failed"  # handshake/auth refused or the peer broke the protocol


# --- events handed to the caller -------------------------------------------------------


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


@dataclass
class _Pending:
    command: str
    has_body: bool


def agent_error(command: str, text: str) -> AgentError:
    """Map an agent's error string to our exception type, keeping its exact text (§6)."""
    if text in ("Authentication required", "Invalid authentication token"):
        return AuthError(text, command=command)
    if text in ("Unsupported IPC version", "Handshake already performed", "Handshake required"):
        return HandshakeError(text, command=command)
    if text == "Unsupported command":
        return UnsupportedCommand(text, command=command)
    if text == "Invalid event filter":
        return InvalidFilter(text, command=command)
    if text.startswith("Encoded length of tags exceeds limit"):
        return TagsTooLarge(text, command=command)
    if command in ("query", "respond") or text.startswith("No pending queries"):
        return QueryError(text, command=command)
    if command.endswith("-key") or command == "list-keys":
        return KeyringError(text, command=command)
    return AgentError(text, command=command)


@dataclass
class Connection:
    """One RPC connection's protocol state. Not thread-safe: callers serialise access."""

    auth_key: str | None = None
    first_seq: int = 0
    state: State = State.HANDSHAKING
    _seq: int = field(init=False)
    _out: bytearray = field(init=False, default_factory=bytearray)
    _held: list[bytes] = field(init=False, default_factory=list)
    _pending: dict[int, _Pending] = field(init=False, default_factory=dict)
    _streams: dict[int, str] = field(init=False, default_factory=dict)
    _draining: dict[int, str] = field(init=False, default_factory=dict)
    _echoes: set[int] = field(init=False, default_factory=set)
    _stopping: dict[int, int] = field(init=False, default_factory=dict)  # stop seq -> target
    _header: tuple[int, str, str] | None = field(init=False, default=None)  # seq, kind, error
    _events: list[Event] = field(init=False, default_factory=list)
    _unpacker: msgpack.Unpacker = field(init=False)
    _fed: int = field(init=False, default=0)  # bytes fed to the unpacker so far
    _started: int = field(init=False, default=0)  # where the message being read began
    _items: int = field(init=False, default=0)  # decoded in the message being read

    def __post_init__(self) -> None:
        self._seq = self.first_seq
        self._unpacker = msgpack.Unpacker(
            raw=False,
            unicode_errors="surrogateescape",
            max_buffer_size=MAX_MESSAGE_BYTES,
            max_str_len=MAX_STRING,
            max_bin_len=MAX_STRING,
            max_array_len=MAX_LIST,
            max_map_len=MAX_LIST,
            max_ext_len=MAX_STRING,
            object_hook=self._count,
            list_hook=self._count,
        )
        self._write("handshake", {"Version": IPC_VERSION})

    # --- sending -----------------------------------------------------------------------

    def send(self, command: str, body: Mapping[str, object] | None = None) -> int:
        """Queue a request and return its Seq. Held back until the connection is ready."""
        if command not in COMMANDS or command in ("handshake", "auth"):
            raise ProtocolError(f"not a request this client sends: {command!r}")
        if (body is not None) != (command in _TAKES_BODY):
            raise ProtocolError(f"{command!r} {'needs' if body is None else 'takes no'} body")
        if self.state is State.FAILED:
            raise ProtocolError("connection failed; open a new one")
        seq = self._write(command, body, hold=self.state is not State.READY)
        if command == "stop" and body is not None:
            target = body.get("Stop")
            if isinstance(target, int):
                self._stopping[seq] = target
        return seq

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _write(self, command: str, body: Mapping[str, object] | None, *, hold: bool = False) -> int:
        seq = self._seq
        self._seq += 1
        try:
            data: bytes = msgpack.packb({"Command": command, "Seq": seq})
            if body is not None:
                data += msgpack.packb(dict(body), use_bin_type=True)
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            raise ProtocolError(f"cannot encode {command!r} request: {exc}") from exc
        self._pending[seq] = _Pending(command, body is not None)
        (self._held.append if hold else self._out.extend)(data)
        return seq

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket (any split is fine)."""
        if self.state is State.FAILED:
            raise ProtocolError("connection failed; open a new one")
        try:
            self._unpacker.feed(data)
            self._fed += len(data)
            for obj in self._unpacker:
                self._check_size(self._unpacker.tell() - self._started)
                self._started, self._items = self._unpacker.tell(), 0
                self._on_object(obj)
            self._check_size(self._fed - self._started)  # a message not yet complete
        except ProtocolError:
            self.state = State.FAILED
            raise
        except ValueError as exc:
            self.state = State.FAILED
            if "exceeds max_" in str(exc):
                raise ProtocolError(f"the agent sent an oversized message: {exc}") from exc
            raise ProtocolError(f"undecodable data from agent: {exc!r}") from exc
        except Exception as exc:  # msgpack raises many types on garbage; all mean the same
            self.state = State.FAILED
            raise ProtocolError(f"undecodable data from agent: {exc!r}") from exc

    def _count(self, value: _Sized) -> _Sized:
        """Called by msgpack for each list and map as it is built (the hot path of a big
        ``members`` reply: two calls per member)."""
        self._items += len(value) + 1
        if self._items <= MAX_MESSAGE_ITEMS:
            return value
        raise ProtocolError(
            f"the agent sent an oversized message: more than {MAX_MESSAGE_ITEMS} values"
        )

    @staticmethod
    def _check_size(size: int) -> None:
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                f"the agent sent an oversized message: more than {MAX_MESSAGE_BYTES} bytes"
            )

    def next_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _on_object(self, obj: object) -> None:
        if self._header is None:
            self._on_header(obj)
            return
        seq, kind, error = self._header
        self._header = None
        if kind == "reply":
            command = self._pending.pop(seq).command
            self._events.append(Reply(seq, command, error, _BODY_PARSERS[command](obj)))
        elif kind == "record":
            self._on_record(seq, obj)
        # kind == "drain": a stopped stream's buffered record, parsed and dropped (§1.2)

    def _on_header(self, obj: object) -> None:
        hdr = models._map(obj, "response header")
        seq, error = hdr.get("Seq"), hdr.get("Error", "")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(error, str):
            raise ProtocolError(f"malformed response header: {hdr!r}")
        if seq in self._streams:
            self._header = (seq, "record", error)
        elif seq in self._draining:
            self._header = (seq, "drain", error)
        elif seq in self._echoes:
            self._echoes.discard(seq)  # the re-read body's second "Authentication required"
        elif seq in self._pending:
            self._on_reply_header(seq, error)
        else:
            raise ProtocolError(f"response for Seq {seq}, which has no request outstanding")

    def _on_reply_header(self, seq: int, error: str) -> None:
        pending = self._pending[seq]
        command = pending.command
        if command in ("handshake", "auth"):
            del self._pending[seq]
            self._on_setup_reply(seq, command, error)
        elif command in _BODY_PARSERS and error not in _NO_BODY_ERRORS:
            self._header = (seq, "reply", error)
        else:
            del self._pending[seq]
            if error == "Authentication required" and pending.has_body:
                self._echoes.add(seq)
            if command in _RECORD_PARSERS and not error:
                self._streams[seq] = command
            target = self._stopping.pop(seq, -1)
            if command == "stop" and not error:
                self._on_stopped(target)
            self._events.append(Reply(seq, command, error))

    def _on_setup_reply(self, seq: int, command: str, error: str) -> None:
        self._events.append(Reply(seq, command, error))
        if error:
            self.state = State.FAILED
            self._held.clear()
        elif command == "handshake" and self.auth_key is not None:
            self.state = State.AUTHENTICATING
            self._write("auth", {"AuthKey": self.auth_key})
        else:
            self.state = State.READY
            for data in self._held:
                self._out.extend(data)
            self._held.clear()
            self._events.append(Ready())

    def _on_stopped(self, target: int) -> None:
        command = self._streams.pop(target, None)
        if command is not None:
            self._draining[target] = command

    def _on_record(self, seq: int, obj: object) -> None:
        item = _RECORD_PARSERS[self._streams[seq]](obj)
        self._events.append(StreamRecord(seq, item))
        if isinstance(item, models.QueryRecord) and item.type == "done":
            del self._streams[seq]
            self._events.append(StreamEnded(seq))

    # --- introspection -----------------------------------------------------------------

    def is_stream(self, seq: int) -> bool:
        return seq in self._streams


def encode_reply(seq: int, error: str = "", body: object = None) -> bytes:
    """Encode an agent-side reply the way Serf does; for tests and fake peers only."""
    data: bytes = msgpack.packb({"Error": error, "Seq": seq})
    if body is not None:
        data += msgpack.packb(body, use_bin_type=True)
    return data


def decode_requests(data: bytes) -> list[object]:
    """Decode a byte string of requests into raw objects; for tests and fake peers only."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return list(unpacker)
