"""Session-scoped services: the broker (a real local Kafka by default), PostgreSQL (pgserver),
Qdrant (local mode)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ is marked ``integration`` (a ``pytestmark`` in a
    conftest marks nothing: pytest reads it from test modules only), so ``-m "not
    integration"`` leaves them all out, whether or not their module marks them itself."""
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


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


@dataclass
class BrokerUnderTest:
    """The broker the integration tests run on.

    ``kind``: ``kafka`` (a real local Apache Kafka started by the suite, the default),
    ``mock`` (librdkafka's mock cluster, ``LEARNSTREAM_TEST_BROKER=mock``, for machines
    without Java) or ``external`` (``LEARNSTREAM_TEST_BOOTSTRAP=host:port``).
    ``kafka`` is the launcher handle when the suite started it (node kills and restarts).
    """

    bootstrap_servers: str
    kind: str
    data_dir: Path
    kafka: Any = None

    @property
    def real(self) -> bool:
        """True unless this is the mock cluster."""
        return self.kind != "mock"


def _start_local_kafka(data_dir: Path, nodes: int = 1) -> Any:
    from learnstream.localkafka import LocalKafka

    return LocalKafka(data_dir, nodes=nodes, heap="384m" if nodes > 1 else "512m").start()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    """One broker for the whole session; tests keep apart by unique topic/group names.

    A real local Kafka by default. Under ``CI=true`` it must start: the run fails, it does
    not fall back. Elsewhere a machine without Java falls back to the mock, with a warning.
    """
    external = os.environ.get("LEARNSTREAM_TEST_BOOTSTRAP")
    data_dir = tmp_path_factory.mktemp("broker")
    if external:
        yield BrokerUnderTest(external, "external", data_dir)
        return
    mode = os.environ.get("LEARNSTREAM_TEST_BROKER", "kafka")
    if mode not in {"kafka", "mock"}:
        raise pytest.UsageError(f"LEARNSTREAM_TEST_BROKER must be kafka or mock, not {mode!r}")
    if mode == "kafka":
        from learnstream.localkafka import LocalKafkaError

        try:
            kafka = _start_local_kafka(data_dir)
        except LocalKafkaError as exc:
            if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
                pytest.exit(f"CI needs the real Kafka broker, and it did not start: {exc}", 3)
            warnings.warn(
                f"no local Kafka ({exc}); the integration tests run on the mock cluster",
                stacklevel=1,
            )
        else:
            try:
                yield BrokerUnderTest(kafka.bootstrap_servers, "kafka", data_dir, kafka)
            finally:
                kafka.stop()
            return
    mock = DevBrokerProcess(data_dir)
    yield BrokerUnderTest(mock.bootstrap_servers, "mock", data_dir)
    code, out = mock.stop()
    assert code == 0, out


@pytest.fixture
def real_kafka(kafka_broker: BrokerUnderTest) -> BrokerUnderTest:
    """The session broker, for tests of what only a real broker does (skipped on the mock)."""
    if not kafka_broker.real:
        pytest.skip("needs a real Kafka broker (LEARNSTREAM_TEST_BROKER=mock is set)")
    return kafka_broker


@pytest.fixture
def local_kafka(kafka_broker: BrokerUnderTest) -> BrokerUnderTest:
    """The session broker when the suite runs it itself (kill and restart tests)."""
    if kafka_broker.kafka is None:
        pytest.skip("needs the suite's own local Kafka (not the mock or an external cluster)")
    return kafka_broker


@contextlib.contextmanager
def _broker_of_its_own(kafka_broker: BrokerUnderTest, folder: Path) -> Iterator[BrokerUnderTest]:
    if kafka_broker.kind == "external":
        yield kafka_broker
    elif kafka_broker.kind == "kafka":
        kafka = _start_local_kafka(folder / "own-kafka")
        try:
            yield BrokerUnderTest(kafka.bootstrap_servers, "kafka", folder / "own-kafka", kafka)
        finally:
            kafka.stop()
    else:
        mock = DevBrokerProcess(folder / "own-mock")
        try:
            yield BrokerUnderTest(mock.bootstrap_servers, "mock", folder / "own-mock")
        finally:
            mock.stop()


@pytest.fixture
def own_broker(kafka_broker: BrokerUnderTest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """A broker of this test's own, of the session broker's kind, for tests whose records
    must not meet other tests' (or whose broker is killed): a fresh one-node local Kafka, or
    a fresh mock cluster. On an external cluster, that cluster (nothing else can be started).

    Tests whose records are not unique to the run (the example files) and tests that read the
    registry's topics from the start need one: a worker reads the shared topics from the start.
    """
    with _broker_of_its_own(kafka_broker, tmp_path) as broker:
        yield broker


@pytest.fixture(scope="module")
def module_broker(
    kafka_broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerUnderTest]:
    """`own_broker` for a whole test module (a module-scoped worker on it)."""
    with _broker_of_its_own(kafka_broker, tmp_path_factory.mktemp("module-broker")) as broker:
        yield broker


@pytest.fixture(scope="session")
def mock_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBrokerProcess]:
    """The dev broker (mock cluster) itself, for the tests of `learnstream broker`."""
    broker = DevBrokerProcess(tmp_path_factory.mktemp("mock"))
    yield broker
    code, out = broker.stop()
    assert code == 0, out


@pytest.fixture
def kafka_env(kafka_broker: BrokerUnderTest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's settings at the session broker; returns the bootstrap address."""
    monkeypatch.setenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    return kafka_broker.bootstrap_servers


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL (with pgvector) started by pgserver in a temp folder.

    Not under pytest's temp folder: as root, pgserver runs PostgreSQL as the ``pgserver``
    user, and every pytest session that starts resets ``/tmp/pytest-of-root`` to mode 0700,
    which cuts a server there off from its own data (a PANIC at its next checkpoint) when
    test runs overlap on one machine.
    """
    import shutil
    import tempfile

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver

    if os.geteuid() == 0:  # pgserver's own useradd fails when another session adds it first
        from learnstream.postgres import _prepare_root_user

        _prepare_root_user(dict(os.environ))
    folder = Path(tempfile.mkdtemp(prefix="lspg")) / "pg"
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def qdrant_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qdrant local-mode folder."""
    return tmp_path_factory.mktemp("qdrant")
