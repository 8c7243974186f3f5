"""``make bench``: every benchmark in turn (each prints its figures and writes them to
bench/README.md's tables as its own docstring says); exit non-zero if one failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["agent_bench.py", "api_bench.py", "ui_bench.py", "backup_bench.py", "cli_startup.py",
           "net_bench.py", "nic_bench.py", "pool_bench.py", "multihost_bench.py",
           "migration_bench.py", "metrics_bench.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = []
    for name in BENCHES:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(here / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
