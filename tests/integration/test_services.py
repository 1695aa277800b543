"""The session services the later stages build on: PostgreSQL via psycopg, Qdrant local mode."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_postgres_accepts_upserts(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS harness_probe (id text PRIMARY KEY, n int)")
        for n in (1, 2):
            conn.execute(
                "INSERT INTO harness_probe VALUES ('a', %s) "
                "ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n",
                (n,),
            )
        assert conn.execute("SELECT count(*), max(n) FROM harness_probe").fetchone() == (1, 2)


def test_qdrant_local_mode_searches_by_cosine(qdrant_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(qdrant_path / "probe"))
    client.create_collection(
        "probe", vectors_config=models.VectorParams(size=3, distance=models.Distance.COSINE)
    )
    client.upsert(
        "probe",
        points=[
            models.PointStruct(id=1, vector=[1, 0, 0], payload={"t": "x"}),
            models.PointStruct(id=2, vector=[0, 1, 0], payload={"t": "y"}),
        ],
    )
    hits = client.query_points("probe", query=[0.9, 0.1, 0], limit=1).points
    assert hits[0].id == 1
    client.close()


def test_a_corrupt_embedded_postgres_gives_one_line(tmp_path: Path) -> None:
    """The sink on a broken embedded PostgreSQL folder: exit 1, one line naming why and the fix."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "data" / "postgres"
    folder.mkdir(parents=True)
    (folder / "PG_VERSION").write_text("99\n")  # initdb never ran: no postgresql.conf
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(
        LEARNSTREAM_DATA_DIR=str(tmp_path / "data"),
        LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1",
    )
    out = subprocess.run(
        [sys.executable, "-m", "learnstream", "sink"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "embedded PostgreSQL" in lines[0] and "did not start" in lines[0], lines
    assert "postgresql.conf" in lines[0] and "LEARNSTREAM_POSTGRES__URL" in lines[0], lines


def test_a_process_killed_with_minus_9_leaves_no_postmaster_behind() -> None:
    """The first user of the embedded PostgreSQL dies with SIGKILL; the next one exits
    cleanly, and the server stops with it instead of running on, orphaned."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    root = Path(tempfile.mkdtemp(prefix="lsorphan"))  # outside pytest's temp root (see conftest)
    folder = root / "pg"
    code = (
        "import sys, time\n"
        "from learnstream.postgres import embedded_url\n"
        "from learnstream.core.settings import load_settings\n"
        "print(embedded_url(load_settings(postgres={'dir': sys.argv[1]})), flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}

    def postmaster() -> int:
        return int((folder / "postmaster.pid").read_text().split()[0])

    def running(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    first = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), "600"], stdout=subprocess.PIPE, env=env
    )
    try:
        assert first.stdout is not None and first.stdout.readline().startswith(b"postgresql")
        pid = postmaster()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert running(pid)  # nobody stopped it
        second = subprocess.run(
            [sys.executable, "-c", code, str(folder), "0"], env=env, timeout=120, check=False
        )
        assert second.returncode == 0  # it attached to the running server, then exited
        deadline = time.monotonic() + 20
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(pid), "the embedded postmaster outlived every process using it"
    finally:
        if first.poll() is None:
            first.kill()
        with contextlib.suppress(OSError, ValueError):
            os.kill(postmaster(), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
