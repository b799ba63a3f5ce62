"""A FAKE serf agent: it speaks the RPC handshake and then answers ``members`` huge.

The real agent cannot produce this fault (issue 13, point 6: a reply with a million
members): whoever holds the RPC port can. Only for that test and its figures, over real
TCP; the client's own tests use the in-memory ``fake_core_agent``, and the rest talk to
real agents (``serfagents``). It serves ``handshake``, ``auth`` (any key),
``stats`` (a tiny, valid reply), ``stream``/``monitor`` (an ack, then silence) and
``members``, whose reply announces ``members`` entries and streams them, shaped as the
real agent shapes them (``reference/serf-rpc.md`` §3), so the client can only stop it by
its own limits. Everything is written lazily: the fake itself stays small.

Started as a thread in the test process (``FakeAgent(...).start()``) or as a process
(``python -m tests.lab.fake_agent PORT MEMBERS``), for figures measured on it alone.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]

from tests.lab.fake_core_agent import encode_reply
from tests.lab.serfagents import HOST, free_port

_CHUNK = 2000  # members per write
_BODY_COMMANDS = frozenset({"stats", "members", "members-filtered"})


def member(i: int) -> dict[str, Any]:
    """One member record, every key the agent sends (§3)."""
    return {
        "Name": f"fake-{i:07d}",
        "Addr": bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255]),
        "Port": 7946,
        "Tags": {"role": "fake"},
        "Status": "alive",
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


class FakeAgent:
    """A listening fake agent on 127.0.0.1; ``close()`` stops it."""

    def __init__(self, members: int, *, port: int | None = None) -> None:
        self.members = members
        self.port = port or free_port()
        self.requests: list[str] = []
        self.bytes_sent = 0
        self._server = socket.create_server((HOST, self.port))
        self._server.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fake-agent", daemon=True)

    @property
    def rpc_addr(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> FakeAgent:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self._thread.join(5)

    def __enter__(self) -> FakeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn, contextlib.suppress(OSError):
            while not self._closed.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for obj in unpacker:
                    if isinstance(obj, dict) and "Command" in obj:
                        self._answer(conn, obj["Command"], obj["Seq"])

    def _answer(self, conn: socket.socket, command: str, seq: int) -> None:
        self.requests.append(command)
        header = encode_reply(seq)
        if command not in _BODY_COMMANDS:
            self._send(conn, header)  # handshake, auth, stream ack, ...
        elif command == "stats":
            body = {"agent": {"name": "fake-0000000"}, "tags": {"role": "fake"}}
            self._send(conn, header + msgpack.packb(body))
        else:
            self._send_members(conn, header)

    def _send_members(self, conn: socket.socket, header: bytes) -> None:
        packer = msgpack.Packer()
        self._send(conn, header + packer.pack_map_header(1) + packer.pack("Members"))
        self._send(conn, packer.pack_array_header(self.members))
        for start in range(0, self.members, _CHUNK):
            end = min(start + _CHUNK, self.members)
            self._send(conn, b"".join(packer.pack(member(i)) for i in range(start, end)))

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.bytes_sent += len(data)


def main(argv: list[str]) -> None:
    """``python -m tests.lab.fake_agent PORT MEMBERS``: serve until killed."""
    agent = FakeAgent(int(argv[1]), port=int(argv[0])).start()
    print(f"fake agent on {agent.rpc_addr}", flush=True)
    agent._thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
