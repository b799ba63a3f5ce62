"""``make bench``: run every benchmark in one go; each prints its figures and baselines."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> int:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    wanted = sys.argv[1:] or names
    for name in wanted:
        print(f"\n######## bench.{name}", flush=True)
        started = time.monotonic()
        importlib.import_module(f"bench.{name}").main()
        print(f"######## bench.{name}: {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
