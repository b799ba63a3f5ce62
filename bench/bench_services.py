"""``serfbridge services --json`` against avahi-ps's shell way of reading the same tags.

Issue 3's benchmark, two parts:

* capacity: how many typical Kubernetes entries fit in 512 bytes next to Cloudy's
  ``serf`` self-entry (``bench_cloudy_capacity.capacity``, the same budget check
  ``publish`` uses);
* speed: a 20-agent loopback cluster, each agent's ``services`` tag filled with as many
  typical entries as fit, read (1) by our CLI as a subprocess, (2) by a bash script that
  mirrors avahi-ps's ``serf_find_`` (``reference/cloudy-avahi-ps.md`` §1.5: ``serf
  members`` once, then per member ``base64 -d | bunzip2 | sed | jq``), and (3) by our code
  in-process, to separate Python start-up from the work. Both CLIs' outputs are compared.

Speed is reported, never asserted. Needs ``serf``, ``jq``, ``bzip2`` and ``base64``.

Run: ``.venv/bin/python -m bench.bench_services``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.bench_cloudy_capacity import CLUSTER, NODE, SERVICES, capacity
from bench.bench_rpc_members import (
    ms,
    p90,
    print_table,
    run_checked,
    time_calls,
    time_interleaved,
)
from serfbridge.cloudy import (
    SERVICES_TAG,
    Entry,
    decode_members,
    encode_services,
    make_entry,
    owner_txt,
    plan_services_tag,
    search_json,
)
from serfbridge.errors import BudgetError
from serfbridge.rpc.budget import DEFAULT_TAG_LIMIT, encoded_tags_size
from serfbridge.rpc.client import SerfClient
from tests.lab.serfagents import SerfAgent, SerfCluster

AGENTS = 20
#: Longer than serf's 30 s reconnect interval: a member falsely marked failed under
#: CPU load (20 agents on a small box) rejoins by itself instead of failing the start.
JOIN_TIMEOUT = 45.0
CLI_RUNS = 20
INPROCESS_RUNS = 100
SERFBRIDGE = str(Path(sys.executable).with_name("serfbridge"))

#: avahi-ps-serf's search (serf_find_, reference/cloudy-avahi-ps.md §1.5), written out:
#: members once, then per member one jq for name+tag and the decode pipeline. node_id is
#: prepended in bash (no extra process), so this is a lower bound on avahi-ps's cost.
SEARCH_SCRIPT = r"""#!/bin/bash
set -u
rpc="$1"
rows=()
while IFS= read -r member; do
  { IFS= read -r name; IFS= read -r tag; } \
    < <(echo "$member" | jq -r '.name, (.tags.services // "")')
  [ -n "$tag" ] || continue
  while IFS= read -r obj; do
    rows+=("{\"node_id\":\"$name\",${obj#\{}")
  done < <(echo $tag | base64 -d | bunzip2 | sed "s/'/\"/g" | jq -c '.[]')
done < <(serf members -status=alive -format json -rpc-addr="$rpc" | jq -c -M '.members[]')
(IFS=,; echo "[${rows[*]}]")
"""


# --- (a) capacity -----------------------------------------------------------------------


def capacity_rows() -> list[list[str]]:
    variants = {f"k8s tag ({CLUSTER}/{NODE}) + serf self-entry": {"k8s": f"{CLUSTER}/{NODE}"}}
    variants["serf self-entry only"] = {}
    rows = []
    for label, other_tags in variants.items():
        count, used = capacity(DEFAULT_TAG_LIMIT, other_tags=other_tags)
        rows.append([label, str(count), f"{used} B"])
    return rows


# --- (b) a cluster full of services ----------------------------------------------------


def agent_entries(index: int, agent: SerfAgent) -> list[Entry]:
    """The serf self-entry plus as many typical k8s entries as fit; names vary per agent."""
    host, ip = f"{agent.name}.guifi.local", f"10.139.40.{index + 1}"
    entries = [
        make_entry(
            description="SERF instance running",
            type="serf",
            port=5000,
            host=host,
            ip=ip,
            microcloud=CLUSTER,
        )
    ]
    for k in range(len(SERVICES)):
        namespace, service = SERVICES[(3 * index + k) % len(SERVICES)]
        port = 30000 + 37 * k + index
        txt = owner_txt(cluster=CLUSTER, namespace=namespace, service=service, port=port)
        candidate = make_entry(
            description=f"{namespace}_{service}",
            type="kubernetes",
            port=port,
            txt=txt,
            host=host,
            ip=ip,
            microcloud=CLUSTER,
        )
        try:
            plan_services_tag({}, [*entries, candidate])
        except BudgetError:
            break
        entries.append(candidate)
    return entries


def publish_all(cluster: SerfCluster) -> dict[str, str]:
    """Set every agent's ``services`` tag (in parallel: ``tags`` waits for gossip)."""
    values = {
        agent.name: encode_services(agent_entries(i, agent))
        for i, agent in enumerate(cluster.agents)
    }

    def publish(agent: SerfAgent) -> None:
        with SerfClient(agent.rpc_addr) as client:
            client.tags({SERVICES_TAG: values[agent.name]}, current={})

    with ThreadPoolExecutor(max_workers=len(cluster.agents)) as pool:
        list(pool.map(publish, cluster.agents))
    viewer = cluster.agents[0]
    cluster.wait_for(
        lambda: all(
            m["Tags"].get(SERVICES_TAG) == values[m["Name"]] for m in cluster.members(viewer)
        ),
        what="every services tag gossiped to the first agent",
    )
    return values


def in_process(addr: str) -> str:
    """What the CLI does, minus Python start-up: dial, members, decode, print-ready JSON."""
    with SerfClient(addr) as client:
        members = client.members()
    rows, _ = decode_members(members)
    return search_json(rows)


def canonical(text: str) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in json.loads(text))


def speed_rows(addr: str, script: Path) -> tuple[list[list[str]], list[str]]:
    ours_argv = [SERFBRIDGE, "--rpc-addr", addr, "services", "--json"]
    shell_argv = ["bash", str(script), addr]
    ours_out, shell_out = run_checked(ours_argv), run_checked(shell_argv)
    agree = canonical(ours_out) == canonical(shell_out)
    notes = [
        f"outputs agree: {'yes' if agree else 'no'} "
        f"({len(json.loads(ours_out))} rows ours, {len(json.loads(shell_out))} rows shell; "
        "compared as parsed JSON, order ignored)"
    ]
    cli_s, shell_s = time_interleaved(
        [lambda: run_checked(ours_argv), lambda: run_checked(shell_argv)], CLI_RUNS
    )
    import_s = time_calls(
        lambda: run_checked([sys.executable, "-c", "import serfbridge.cli"]), CLI_RUNS, warmup=2
    )
    fresh_s = time_calls(lambda: in_process(addr), INPROCESS_RUNS)
    with SerfClient(addr) as kept:
        kept_s = time_calls(lambda: search_json(decode_members(kept.members())[0]), INPROCESS_RUNS)
    base = statistics.median(cli_s)
    rows = [
        _row(f"serfbridge services --json (subprocess), n={CLI_RUNS}", cli_s, base),
        _row(
            f"avahi-ps way: bash + serf + per-member jq/base64/bunzip2, n={CLI_RUNS}", shell_s, base
        ),
        _row(f"  python -c 'import serfbridge.cli' (start-up only), n={CLI_RUNS}", import_s, base),
        _row(f"  in-process: dial + members + decode + json, n={INPROCESS_RUNS}", fresh_s, base),
        _row(f"  in-process, kept connection, n={INPROCESS_RUNS}", kept_s, base),
    ]
    return rows, notes


def _row(label: str, samples: list[float], base: float) -> list[str]:
    median = statistics.median(samples)
    return [label, ms(median), ms(p90(samples)), f"{median / base:.2f}x"]


def check_tools() -> None:
    missing = [tool for tool in ("serf", "jq", "bzip2", "base64", "bash") if not shutil.which(tool)]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (apt-get install -y jq serf)")


def main() -> None:
    check_tools()
    started = time.monotonic()
    print_table(
        f"capacity: typical kubernetes entries that fit in {DEFAULT_TAG_LIMIT} B of tags",
        ["node's other tags", "k8s entries", "tags size"],
        capacity_rows(),
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-services-") as tmp,
        SerfCluster(AGENTS, join_timeout=JOIN_TIMEOUT) as cluster,
    ):
        script = Path(tmp) / "avahi_ps_search.sh"
        script.write_text(SEARCH_SCRIPT, encoding="utf-8")
        values = publish_all(cluster)
        rows, notes = speed_rows(cluster.agents[0].rpc_addr, script)
    counts = [len(decode_members([("x", "alive", {SERVICES_TAG: v})])[0]) for v in values.values()]
    sizes = [encoded_tags_size({SERVICES_TAG: v}) for v in values.values()]
    print(
        f"\n{AGENTS} agents, each with {min(counts)}-{max(counts)} entries in its services tag "
        f"(serf self-entry + {min(counts) - 1}-{max(counts) - 1} kubernetes, as many as fit); "
        f"tag sets {min(sizes)}-{max(sizes)} B of {DEFAULT_TAG_LIMIT}"
    )
    print_table(
        "services over the cluster, per run (ratio = median / serfbridge CLI median)",
        ["path", "median ms", "p90 ms", "vs CLI"],
        rows,
    )
    for note in notes:
        print(f"  {note}")
    print(f"\ntotal wall time {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
