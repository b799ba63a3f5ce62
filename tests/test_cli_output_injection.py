"""Issue 13, defect 12: gossip cannot inject into our output. Real agents, raw tag bytes.

Tables escape control characters; JSON is always valid UTF-8 with no lone surrogate, so a
strict parser (PHP's, in Cloudy's UI) accepts it; our own publishing refuses bidi controls.
"""

from __future__ import annotations

import base64
import bz2
import json
import socket

import msgpack
import pytest
from click.testing import CliRunner

from serfbridge.cli import cli
from tests.lab.serfagents import SerfCluster

pytestmark = pytest.mark.integration

# Raw bytes on the wire (msgpack bin into the agent's Go strings): a newline that forges
# a row, NUL, an ESC sequence that recolours the terminal, an undecodable byte, RLO.
EVIL_VALUE = b"a\nforged-row 127.0.0.1:1 alive\x00\x1b[31mred\xff\xe2\x80\xae"
# A services entry whose fields hold the same, as JSON escapes (§1.2 lists are JSON).
EVIL_ENTRY = (
    '{"s":"web\\u001b[2J","d":"x\\nforged\\u0000","m":"h\\udcff","i":"\\ud800",'
    '"p":"1","e":"\\u202eevil","t":""}'
)


def run(rpc: str, *args: str):
    return CliRunner().invoke(cli, ["--rpc-addr", rpc, *args], catch_exceptions=False)


def set_raw_tags(rpc: str, tags: dict[str, bytes]) -> None:
    """``tags`` with raw bytes as msgpack str (what a Go peer can send: Go strings are bytes)."""
    host, _, port = rpc.rpartition(":")
    unpacker = msgpack.Unpacker(raw=True)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for seq, (command, body) in enumerate(
            [("handshake", {"Version": 1}), ("tags", {"Tags": tags, "DeleteTags": []})]
        ):
            header = msgpack.packb({"Command": command, "Seq": seq})
            sock.sendall(header + msgpack.packb(body, use_bin_type=False))
            while True:
                try:
                    reply = next(unpacker)
                    break
                except StopIteration:
                    unpacker.feed(sock.recv(4096))
            assert reply[b"Error"] == b"", reply


def evil_tags(cluster: SerfCluster) -> None:
    services = base64.b64encode(bz2.compress(f"[{EVIL_ENTRY}]\n".encode(), 9))
    set_raw_tags(cluster.agent("n1").rpc_addr, {"evil": EVIL_VALUE, "services": services})
    cluster.wait_for(
        lambda: any("evil" in m["Tags"] for m in cluster.members("n2")),
        timeout=10,
        what="the evil tag gossiped",
    )


def assert_clean(text: bytes, unsafe: str = "\x00\x1b\u202e") -> None:
    decoded = text.decode("utf-8")  # strict: raises on 0xFF or an encoded surrogate
    for char in unsafe:
        assert char not in decoded, repr(decoded)


def test_tables_escape_controls_and_json_is_valid_utf8(serf3: SerfCluster) -> None:
    evil_tags(serf3)
    rpc = serf3.agent("n2").rpc_addr

    table = run(rpc, "members")
    assert table.exit_code == 0, table.output
    assert_clean(table.stdout_bytes)
    assert len(table.stdout.splitlines()) == 3  # no forged row
    assert "a\\nforged-row" in table.stdout and "\\x1b[31m" in table.stdout
    assert "\\xff" in table.stdout and "\\u202e" in table.stdout

    members_json = run(rpc, "members", "--json")
    assert members_json.exit_code == 0
    assert_clean(members_json.stdout_bytes, unsafe="\x00\x1b")
    assert "\\udcff" not in members_json.stdout  # a lone surrogate escape: PHP refuses it
    [evil] = [m["tags"]["evil"] for m in json.loads(members_json.stdout)["members"]
              if "evil" in m["tags"]]  # fmt: skip
    assert evil.startswith("a\nforged") and "\ufffd" in evil

    services = run(rpc, "services")
    assert services.exit_code == 0, services.output
    assert_clean(services.stdout_bytes)
    assert "x\\nforged\\x00" in services.stdout and "web\\x1b[2J (1)" in services.stdout

    as_json = run(rpc, "services", "--json")
    assert as_json.exit_code == 0
    # JSON escapes controls; U+202E is valid JSON text, as jq (avahi-ps) prints it.
    assert_clean(as_json.stdout_bytes, unsafe="\x00\x1b")
    assert "\\ud800" not in as_json.stdout and "\\udcff" not in as_json.stdout
    [row] = json.loads(as_json.stdout)
    assert row["m"] == "h\ufffd" and row["i"] == "\ufffd" and row["d"] == "x\nforged\x00"


@pytest.mark.parametrize("char", ["\u202e", "\u2067"])
def test_publish_refuses_bidi_controls_with_exit_2_and_one_line(
    serf3: SerfCluster, char: str
) -> None:
    rpc = serf3.agent("n1").rpc_addr
    result = run(rpc, "publish", f"invoice{char}fdp.exe", "web", "8080")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "bidirectional" in result.output
    listed = run(rpc, "services", "--json")
    assert json.loads(listed.stdout) == []
