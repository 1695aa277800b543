"""The fault suite as a table: each scenario on a real Kafka, with what was lost or duplicated.

Runs the fault tests themselves (they assert zero lost and zero duplicated), with each one
recording its figures, then prints

    scenario | events sent | stored | lost | duplicated | time to recover

``--outage-s`` sets how long PostgreSQL stays down under the sink (30 s by default; the CI
run of the same test uses 7.5 s). Needs Java 17+ and Maven (the suite's local Kafka), or
``LEARNSTREAM_TEST_BOOTSTRAP`` for an external cluster (then the node-kill scenarios skip).

    python bench/bench_faults.py            # about 6 minutes on 2 cores
    python bench/bench_faults.py -k "trainer or llm"

Scenarios: kill -9 of a worker and a sink (2 of each), of the only worker during 4 parallel
`produce send` runs, of the trainer mid-training; a broker kill and restart; the spool's disk
full (``ulimit -f``) while the broker is down; a partition-leader kill on three nodes;
PostgreSQL down under the sink; the LLM endpoint down, then slow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/integration/test_kafka_faults.py",
    "tests/integration/test_sink.py::test_sink_survives_a_postgres_restart_without_loss",
]


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the table; the exit code is pytest's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=30.0, help="PostgreSQL downtime")
    parser.add_argument("-k", default=None, help="pytest -k expression (a subset)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lsfaults") as tmp:
        report = Path(tmp) / "faults.jsonl"
        env = {
            **os.environ,
            "LS_FAULT_REPORT": str(report),
            "LS_FAULT_OUTAGE_S": str(args.outage_s),
        }
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
        if args.k:
            cmd += ["-k", args.k]
        print("running:", " ".join(cmd[2:]), flush=True)
        code = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        rows = [json.loads(x) for x in report.read_text().splitlines()] if report.exists() else []
    header = ("scenario", "events sent", "stored", "lost", "duplicated", "time to recover")
    table = [
        (
            r["scenario"],
            str(r["sent"]),
            f"{r['stored']} {r['where']}",
            str(r["lost"]),
            str(r["duplicated"]),
            f"{r['recovery_s']:.1f} s",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *table, strict=True)]
    for line in (header, tuple("-" * w for w in widths), *table):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
