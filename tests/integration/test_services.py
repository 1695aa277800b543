"""The session services the later stages build on: PostgreSQL via psycopg, Qdrant local mode."""

from __future__ import annotations

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
