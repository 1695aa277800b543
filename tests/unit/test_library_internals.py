"""The private library internals learnstream relies on are still where it expects them.

`streams.mockcompat` patches aiokafka's group rebalance and Faust's consumer factory, and
`scorers.vectors` reaches into Qdrant local mode (``client._client``, its collections and their
SQLite connections). pyproject pins these libraries to the versions checked here; when an
upgrade moves an internal, one of these tests fails and names it, instead of the dev broker's
groups or the history's write speed quietly degrading.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from learnstream.core.errors import ResourceBusyError
from learnstream.core.settings import Settings, load_settings
from scorers.vectors import INTERACTIONS, ensure_collections, is_local, qdrant_client
from scorers.vectors import tune_local_storage as tune

# --- aiokafka: the group rebalance step (streams.mockcompat.tolerate_mock_group_sync) -----------


def test_aiokafka_rebalance_steps_have_the_patched_shape() -> None:
    from aiokafka.consumer import group_coordinator

    cls = group_coordinator.CoordinatorGroupRebalance
    for name, arg in (("_on_join_leader", "response"), ("_send_sync_group_request", "request")):
        method = getattr(cls, name)
        assert inspect.iscoroutinefunction(method), name
        assert list(inspect.signature(method).parameters) == ["self", arg], name
    init = inspect.getsource(cls.__init__)
    assert "self._coordinator = coordinator" in init
    assert "self.group_id = group_id" in init
    assert callable(group_coordinator.GroupCoordinator.request_rejoin)


def test_a_late_sync_group_on_the_mock_rejoins(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka import errors
    from aiokafka.consumer import group_coordinator

    from streams.mockcompat import tolerate_mock_group_sync

    invalid = errors.for_code(42)  # what the mock answers a SyncGroup after the group is Up
    rejoins: list[str] = []

    class Rebalance(group_coordinator.CoordinatorGroupRebalance):  # type: ignore[misc]
        async def _send_sync_group_request(self, request: Any) -> Any:
            raise invalid()

    # Patch a subclass standing in for the real class, so other tests see aiokafka unpatched.
    monkeypatch.setattr(group_coordinator, "CoordinatorGroupRebalance", Rebalance)
    tolerate_mock_group_sync(leader_delay=0)
    step: Any = object.__new__(Rebalance)
    step.group_id = "g"
    step._coordinator = type("C", (), {"request_rejoin": lambda self: rejoins.append("g")})()
    assert asyncio.run(step._send_sync_group_request(None)) is None
    assert rejoins == ["g"]


# --- Faust: the worker consumer factory (streams.mockcompat.shorten_fetch_wait) ---------------


def test_faust_builds_its_consumer_where_the_fetch_wait_is_patched() -> None:
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    factory = AIOKafkaConsumerThread._create_worker_consumer
    assert list(inspect.signature(factory).parameters) == ["self", "transport"]
    assert "fetch_max_wait_ms=1500" in inspect.getsource(factory)  # why the patch exists
    # aiokafka keeps the wait in _fetch_max_wait_ms and reads it only in start().
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)

    async def built() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=123)
        return int(consumer._fetch_max_wait_ms)

    assert asyncio.run(built()) == 123


# --- Qdrant local mode and its SQLite files (scorers.vectors) ---------------------------------


@pytest.fixture
def local_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings for Qdrant local mode in ``tmp_path/qdrant``."""
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LEARNSTREAM_QDRANT__URL", raising=False)
    return load_settings()


def test_local_mode_is_recognized_and_its_history_is_put_in_wal(
    local_settings: Settings, tmp_path: Path
) -> None:
    client = qdrant_client(local_settings)
    try:
        assert type(client._client).__name__ == "QdrantLocal"
        assert is_local(client)
        ensure_collections(client, 4)  # tunes the history's storage
        coll = client._client.collections[INTERACTIONS]
        assert isinstance(coll.storage.storage, sqlite3.Connection)
        assert tune(client, INTERACTIONS) is True
    finally:
        client.close()
    files = list((tmp_path / "qdrant").rglob("storage.sqlite"))
    history = [f for f in files if INTERACTIONS in f.parts]
    assert history, files
    with sqlite3.connect(history[0]) as db:  # WAL is recorded in the file itself
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_server_client_is_not_local() -> None:
    from qdrant_client import QdrantClient

    client = QdrantClient(url="http://127.0.0.1:1", check_compatibility=False)
    try:
        assert type(client._client).__name__ == "QdrantRemote"
        assert not is_local(client)
    finally:
        client.close()


def test_a_local_folder_in_use_is_reported_as_busy(local_settings: Settings) -> None:
    # scorers.vectors recognizes Qdrant's lock error by its message.
    first = qdrant_client(local_settings)
    try:
        with pytest.raises(ResourceBusyError, match="in use by another process"):
            qdrant_client(local_settings)
    finally:
        first.close()
