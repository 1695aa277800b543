"""Session-scoped services: the dev broker (a subprocess), PostgreSQL (pgserver), Qdrant (local)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


class DevBrokerProcess:
    """`learnstream broker` running in a subprocess with its own data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        env = {**os.environ, "LEARNSTREAM_DATA_DIR": str(data_dir)}
        env.pop("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", "broker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        record = data_dir / "broker.json"
        deadline = time.monotonic() + 30
        while not record.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.communicate(timeout=5)[0] if self.proc.poll() is not None else ""
                self.proc.kill()
                raise RuntimeError(f"dev broker did not start: {out}")
            time.sleep(0.05)
        self.bootstrap_servers: str = json.loads(record.read_text())["bootstrap_servers"]

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and output."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out


@pytest.fixture(scope="session")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBrokerProcess]:
    """One dev broker for the whole session; tests keep apart by unique topic/group names."""
    broker = DevBrokerProcess(tmp_path_factory.mktemp("broker"))
    yield broker
    code, out = broker.stop()
    assert code == 0, out


@pytest.fixture
def kafka_env(dev_broker: DevBrokerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's settings at the session dev broker; returns the bootstrap address."""
    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", dev_broker.bootstrap_servers)
    return dev_broker.bootstrap_servers


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private PostgreSQL (with pgvector) started by pgserver in a temp folder."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def qdrant_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qdrant local-mode folder."""
    return tmp_path_factory.mktemp("qdrant")
