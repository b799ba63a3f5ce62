"""FAKE serf agent in memory: speaks the RPC protocol over ``rpc.transport.memory_pair``.

``FakeCoreAgent`` lets the client's shell (``rpc.client``, ``rpc.hub``, ``rpc.wire``)
be tested with no process and no socket: reconnects, streams, timeouts, a stop with a
full buffer. It plays the agent's side of ``reference/serf-rpc.md`` from its own tables
(not the core's, so the two can disagree and a test can notice): handshake, auth (and
the ``Authentication required`` echo, §1.1), ``members``, ``stats``, ``tags`` (with the
512-byte meta limit, §8), ``event``, ``stream``/``stop``, ``monitor``, ``query`` and
``respond``, ``join``, ``force-leave``, ``leave`` and ``get-coordinate``.

It is a FAKE: one process-wide member list, no gossip, no coalescing. Real-agent tests
(``serfagents``) stay the judges of behaviour; this one judges the shell.

``encode_reply`` and ``decode_requests`` are the agent-side codec that tests and
benchmarks use to hand-feed the pure core.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import msgpack

from serfbridge.errors import RPCTimeout, TransportError
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.transport import MemoryTransport, memory_pair

#: §3: the commands whose request carries a body (the agent waits for it).
TAKES_BODY = frozenset(
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
META_LIMIT = 512
_FILTERS = {
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
    "user",
    "query",
    "*",
    "",
}


def encode_reply(seq: int, error: str = "", body: object = None) -> bytes:
    """An agent-side reply as Serf encodes it: header, then the body when there is one."""
    data: bytes = msgpack.packb({"Error": error, "Seq": seq})
    if body is not None:
        data += msgpack.packb(body, use_bin_type=True)
    return data


def decode_requests(data: bytes) -> list[object]:
    """Decode a byte string of client requests (headers and bodies) into raw objects."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return list(unpacker)


def member(name: str, *, tags: dict[str, str] | None = None, status: str = "alive"):
    """One member record with every key the agent sends (§3)."""
    return {
        "Name": name,
        "Addr": b"\x7f\x00\x00\x01",
        "Port": 7946,
        "Tags": tags or {},
        "Status": status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def _matches(event_filter: str, event: str, name: str) -> bool:
    for part in event_filter.split(","):
        kind, _, only = part.partition(":")
        if kind in ("*", "") or (kind == event and only in ("", name)):
            return True
    return False


class _Session:
    """One client connection: its own thread reading requests, and its open streams."""

    def __init__(self, agent: FakeCoreAgent, end: MemoryTransport) -> None:
        self.agent, self.end = agent, end
        self.streams: dict[int, str] = {}  # seq -> filter ("monitor" for a monitor)
        self.queries: dict[int, tuple[_Session, int]] = {}  # ID -> originator's (session, seq)
        self.ready = False
        self.authed = agent.auth_key is None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="fake-core-agent", daemon=True).start()

    def write(self, data: bytes) -> None:
        # A client gone away: its reader ends this session.
        with self._lock, contextlib.suppress(TransportError):
            self.end.send(data)

    def close(self) -> None:
        self.end.close()

    def _objects(self) -> Iterator[object]:
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            try:
                data = self.end.receive(65536, 0.2)
            except RPCTimeout:
                continue
            if not data:
                return
            unpacker.feed(data)
            yield from unpacker

    def _serve(self) -> None:
        objects = self._objects()
        for header in objects:
            command, seq = header["Command"], header["Seq"]
            body = next(objects, {}) if command in TAKES_BODY else None
            self.agent.requests.append(command)
            if not self._answer(command, seq, body):
                break
        self.close()

    def _answer(self, command: str, seq: int, body: Any) -> bool:
        """Reply as the agent would; False when the agent closes the connection here."""
        if command in self.agent.silent:
            return True
        if not self.ready and command != "handshake":
            self.write(encode_reply(seq, "Handshake required"))
            return False
        if not self.authed and command not in ("handshake", "auth"):
            # The agent never read the body: it parses it as the next header (§1.1).
            self.write(encode_reply(seq, "Authentication required") * (1 + (body is not None)))
            return True
        handler = getattr(self, "_on_" + command.replace("-", "_"), None)
        if handler is None:
            self.write(encode_reply(seq, "Unsupported command"))
            return False
        return handler(seq, body) is not False

    def _on_handshake(self, seq: int, body: Any) -> None:
        self.ready = body.get("Version") == 1
        self.write(encode_reply(seq, "" if self.ready else "Unsupported IPC version"))

    def _on_auth(self, seq: int, body: Any) -> None:
        self.authed = body.get("AuthKey") == self.agent.auth_key
        self.write(encode_reply(seq, "" if self.authed else "Invalid authentication token"))

    def _on_members(self, seq: int, body: Any) -> None:
        self.write(encode_reply(seq, "", {"Members": list(self.agent.members)}))

    def _on_stats(self, seq: int, body: Any) -> None:
        stats = {"agent": {"name": self.agent.name}, "tags": dict(self.agent.tags)}
        self.write(encode_reply(seq, "", stats))

    def _on_tags(self, seq: int, body: Any) -> None:
        tags = {k: v for k, v in self.agent.tags.items() if k not in body.get("DeleteTags", [])}
        tags.update(body.get("Tags") or {})
        raw = {k.encode(): v.encode() for k, v in tags.items()}  # old-spec msgpack (§8)
        if 1 + len(msgpack.packb(raw, use_bin_type=False)) > META_LIMIT:
            self.write(
                encode_reply(seq, f"Encoded length of tags exceeds limit of {META_LIMIT} bytes")
            )
            return
        self.agent.tags = tags
        self.write(encode_reply(seq))

    def _on_event(self, seq: int, body: Any) -> None:
        self.write(encode_reply(seq))
        self.agent.emit_user_event(body["Name"], body.get("Payload") or b"")

    def _on_stream(self, seq: int, body: Any) -> None:
        event_filter = body.get("Type", "")
        if not all(p.partition(":")[0] in _FILTERS for p in event_filter.split(",")):
            self.write(encode_reply(seq, "Invalid event filter"))
            return
        self.streams[seq] = event_filter
        self.write(encode_reply(seq))

    def _on_monitor(self, seq: int, body: Any) -> None:
        self.streams[seq] = "monitor"
        self.write(encode_reply(seq) + encode_reply(seq, "", {"Log": "[INFO] fake: monitoring"}))

    def _on_stop(self, seq: int, body: Any) -> None:
        self.streams.pop(body.get("Stop"), None)
        self.write(encode_reply(seq))  # always succeeds (§3)

    def _on_query(self, seq: int, body: Any) -> None:
        self.write(encode_reply(seq))
        if body.get("RequestAck"):
            self.write(
                encode_reply(seq, "", {"Type": "ack", "From": self.agent.name, "Payload": None})
            )
        self.agent.deliver_query(self, seq, body.get("Name", ""), body.get("Payload") or b"")
        done = encode_reply(seq, "", {"Type": "done", "From": "", "Payload": None})
        timer = threading.Timer(body.get("Timeout", 0) / 1e9 or 0.2, self.write, (done,))
        timer.daemon = True
        timer.start()

    def _on_respond(self, seq: int, body: Any) -> None:
        origin = self.queries.pop(body.get("ID"), None)
        if origin is None:
            self.write(encode_reply(seq, "No pending queries matching ID"))
            return
        self.write(encode_reply(seq))
        session, origin_seq = origin
        record = {"Type": "response", "From": self.agent.name, "Payload": body.get("Payload")}
        session.write(encode_reply(origin_seq, "", record))

    def _on_join(self, seq: int, body: Any) -> None:
        self.write(encode_reply(seq, "", {"Num": len(body.get("Existing", []))}))

    def _on_force_leave(self, seq: int, body: Any) -> None:
        self.write(encode_reply(seq))

    def _on_get_coordinate(self, seq: int, body: Any) -> None:
        zero = {"Adjustment": 0.0, "Error": 0.0, "Height": 0.0, "Vec": []}
        self.write(encode_reply(seq, "", {"Coord": zero, "Ok": False}))

    def _on_leave(self, seq: int, body: Any) -> bool:
        self.write(encode_reply(seq))
        return False


class FakeCoreAgent:
    """A FAKE agent; ``connect`` is the ``rpc.transport.Connector`` a client dials with."""

    def __init__(self, name: str = "fake", *, auth_key: str | None = None) -> None:
        self.name, self.auth_key = name, auth_key
        self.members: list[dict[str, Any]] = [member(name)]
        self.tags: dict[str, str] = {}
        self.silent: set[str] = set()  # commands it reads and never answers
        self.requests: list[str] = []
        self.connects = 0
        self.down = False
        self._sessions: list[_Session] = []
        self._ltime = itertools.count(1)
        self._query_ids = itertools.count(1)

    def connect(self, timeout: float) -> MemoryTransport:
        if self.down:
            raise TransportError(f"cannot reach the serf agent at fake:{self.name}: refused")
        self.connects += 1
        client_end, agent_end = memory_pair(f"fake:{self.name}")
        self._sessions.append(_Session(self, agent_end))
        return client_end

    def client(self, **kwargs: Any) -> SerfClient:
        return SerfClient("127.0.0.1:7373", connect=self.connect, **kwargs)

    def kill(self) -> None:
        """Drop every connection and refuse new ones until ``restart``."""
        self.down = True
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def restart(self) -> None:
        self.down = False

    close = kill

    def open_streams(self) -> int:
        """Subscriptions (streams and monitors) the agent serves right now."""
        return sum(len(session.streams) for session in self._sessions)

    def _streams(self, event: str, name: str) -> Iterator[tuple[_Session, int]]:
        for session in list(self._sessions):
            for seq, event_filter in list(session.streams.items()):
                if event_filter != "monitor" and _matches(event_filter, event, name):
                    yield session, seq

    def emit_user_event(self, name: str, payload: bytes = b"", *, copies: int = 1) -> None:
        """A user event to every matching stream; ``copies`` in one write (a flood)."""
        for session, seq in self._streams("user", name):
            records = b"".join(
                encode_reply(
                    seq,
                    "",
                    {
                        "Event": "user",
                        "Name": name,
                        "Payload": payload,
                        "LTime": next(self._ltime),
                        "Coalesce": False,
                    },
                )
                for _ in range(copies)
            )
            session.write(records)

    def emit_member_event(self, event: str, *names: str) -> None:
        members = [m for m in self.members if m["Name"] in names]
        for session, seq in self._streams(event, ""):
            session.write(encode_reply(seq, "", {"Event": event, "Members": members}))

    def deliver_query(self, origin: _Session, origin_seq: int, name: str, payload: bytes) -> None:
        for session, seq in self._streams("query", name):
            query_id = next(self._query_ids)
            session.queries[query_id] = (origin, origin_seq)
            record = {
                "Event": "query",
                "ID": query_id,
                "Name": name,
                "Payload": payload,
                "LTime": next(self._ltime),
            }
            session.write(encode_reply(seq, "", record))
