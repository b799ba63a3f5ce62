"""Who is on the other end of a local socket: the rule that keeps local users out.

Two places trust a local peer, and both ask this module:

* the handler socket (``handoff``) takes events only from the agent's user: the
  peer's uid comes from the kernel (``SO_PEERCRED``), never from what it sends;
* the RPC client (``rpc.client``) talks to an agent on this host only when the socket
  that accepted the connection belongs to the agent's user. While the agent restarts,
  any local user can listen on its port and would otherwise be sent the RPC key. The
  owner comes from the kernel's socket table (``/proc/net/tcp`` and ``tcp6``: each
  socket's uid), looked up by the exact address pair of our connection.

The agent's user is root, or the user this process runs as, or one of the users named
with ``--agent-user`` (``SERFBRIDGE_AGENT_USER``): Debian's and Cloudy's agents run as
root, the lab's as the test's own user. Must not: log, or talk to Serf or Kubernetes.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from serfbridge.errors import ConfigError, UntrustedAgent

PROC_NET = Path("/proc/net")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_TABLE_FIELDS = 8  # /proc/net/tcp columns up to "uid", the last one we read
Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def trusted_uids(agent_users: Iterable[str] = ()) -> frozenset[int]:
    """Root, this process's user, and ``agent_users`` (names or numeric uids)."""
    uids = {0, os.geteuid()}
    for user in agent_users:
        uids.add(_uid_of(user))
    return frozenset(uids)


def _uid_of(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"--agent-user {user!r}: no such user on this host") from None


def user_name(uid: int) -> str:
    """``65534 (nobody)``, or the bare number for a uid with no passwd entry."""
    try:
        return f"{uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return str(uid)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# --- /proc/net/tcp ------------------------------------------------------------------------


def _address(field: str) -> Address:
    """``0100007F:1CCD`` -> (127.0.0.1, 7373). Addresses are the kernel's 32-bit words in
    host byte order; an IPv4-mapped IPv6 address comes back as IPv4."""
    hex_ip, _, hex_port = field.partition(":")
    words = [int(hex_ip[i : i + 8], 16) for i in range(0, len(hex_ip), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    ip = ipaddress.ip_address(raw)
    return _plain(ip), int(hex_port, 16)


def _plain(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_socket_table(text: str) -> list[tuple[Address, Address, str, int]]:
    """The rows of a ``/proc/net/tcp`` or ``tcp6`` text: (local, remote, state, uid).

    Malformed rows are skipped: the kernel's format is fixed, but a row that cannot be
    read must never stand in for the socket we look for."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < _TABLE_FIELDS:
            continue
        try:
            rows.append((_address(fields[1]), _address(fields[2]), fields[3], int(fields[7])))
        except ValueError:
            continue
    return rows


def maybe_server_uid(server: Address, client: Address, *, tables: Iterable[str]) -> int | None:
    """The uid owning the server end of the connection ``client -> server``, else the
    uid of the socket listening on ``server`` (exactly, or on a wildcard address)."""
    rows = [row for text in tables for row in parse_socket_table(text)]
    for local, remote, _state, uid in rows:
        if local == server and remote == client:
            return uid  # the accepted socket: it carries its listener's owner
    for (ip, port), _remote, state, uid in rows:
        if state == _LISTEN and port == server[1] and (ip == server[0] or ip.is_unspecified):
            return uid
    return None


def _read_tables() -> list[str]:
    texts = []
    for name in ("tcp", "tcp6"):
        try:
            texts.append((PROC_NET / name).read_text())
        except OSError:
            continue  # no IPv6 on this host
    return texts


def check_agent_owner(sock: socket.socket, trusted: frozenset[int], *, addr: str) -> None:
    """Raise ``UntrustedAgent`` unless the local socket that accepted ``sock`` belongs to
    a trusted uid. A peer that is not on this host is not checked (it cannot be)."""
    peer, local = sock.getpeername()[:2], sock.getsockname()[:2]
    server = (_plain(ipaddress.ip_address(peer[0])), int(peer[1]))
    client = (_plain(ipaddress.ip_address(local[0])), int(local[1]))
    uid = maybe_server_uid(server, client, tables=_read_tables())
    if uid is None:
        if server[0].is_loopback:
            raise UntrustedAgent(
                f"refusing the serf agent at {addr}: cannot tell which user listens there "
                f"({PROC_NET}/tcp has no such socket); nothing was sent"
            )
        return  # another host: its users are not ours to judge
    if uid not in trusted:
        allowed = ", ".join(user_name(u) for u in sorted(trusted))
        raise UntrustedAgent(
            f"refusing the serf agent at {addr}: the port is held by uid {user_name(uid)}, "
            f"not by the agent's user ({allowed}; see --agent-user); nothing was sent"
        )
