"""Make aiokafka consumer groups work on the dev broker (librdkafka's mock cluster).

The mock cluster's group coordinator moves a group to *Up* as soon as the leader's SyncGroup
arrives (the leader's request carries every member's assignment), and answers any SyncGroup
that arrives after that with INVALID_REQUEST. librdkafka's own clients rarely hit this, because
their leader computes assignments before syncing; an aiokafka follower often syncs after the
leader, and aiokafka treats INVALID_REQUEST from SyncGroup as fatal, so with two Faust workers
in one group the follower's consumer fails and the group never settles.

`tolerate_mock_group_sync` patches aiokafka's rebalance step, only in processes that talk to
the dev broker: the leader waits a moment before syncing (so followers sync first), and a
follower answered INVALID_REQUEST rejoins instead of failing. Real Kafka and Redpanda never
see either change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from learnstream.core.brokerprofile import BrokerProfile

log = logging.getLogger("learnstream.devbroker")

LEADER_SYNC_DELAY_S = 1.0


def tolerate_mock_group_sync(leader_delay: float = LEADER_SYNC_DELAY_S) -> None:
    """Patch aiokafka's group rebalance for the mock cluster (idempotent)."""
    from aiokafka import errors
    from aiokafka.consumer import group_coordinator

    cls: Any = group_coordinator.CoordinatorGroupRebalance
    if getattr(cls, "_learnstream_mock_patch", False):
        return
    on_join_leader = cls._on_join_leader
    send_sync = cls._send_sync_group_request

    async def _on_join_leader(self: Any, response: Any) -> Any:
        if len(getattr(response, "members", ()) or ()) > 1:
            await asyncio.sleep(leader_delay)
        return await on_join_leader(self, response)

    async def _send_sync_group_request(self: Any, request: Any) -> Any:
        try:
            return await send_sync(self, request)
        except errors.KafkaError as exc:
            if "InvalidRequest" not in repr(exc):
                raise
            log.info("dev broker refused a late SyncGroup for %s; rejoining", self.group_id)
            self._coordinator.request_rejoin()
            return None

    cls._on_join_leader = _on_join_leader
    cls._send_sync_group_request = _send_sync_group_request
    cls._learnstream_mock_patch = True


DEV_FETCH_MAX_WAIT_MS = 100


def shorten_fetch_wait(ms: int = DEV_FETCH_MAX_WAIT_MS) -> None:
    """Shorten the Faust consumer's fetch wait on the dev broker (idempotent).

    Faust hard-codes ``fetch_max_wait_ms=1500``; the mock cluster holds a fetch that finds no
    data for the whole wait (records produced meanwhile do not end it), so on a caught-up
    worker every event waited up to 1.5 s. Real Kafka and Redpanda answer a held fetch as soon
    as data arrives. Measured with bench/bench_score.py at 50 events/s: p99 2.0 s -> 0.41 s.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    cls: Any = AIOKafkaConsumerThread
    if getattr(cls, "_learnstream_fetch_wait_ms", None) is None:
        create = cls._create_worker_consumer

        def _create_worker_consumer(self: Any, transport: Any) -> Any:
            consumer = create(self, transport)
            consumer._fetch_max_wait_ms = cls._learnstream_fetch_wait_ms  # read in start()
            return consumer

        cls._create_worker_consumer = _create_worker_consumer
    cls._learnstream_fetch_wait_ms = ms


def prepare_faust(profile: BrokerProfile) -> None:
    """Patch aiokafka/Faust for ``profile``'s broker before an app starts (only the mock
    needs it)."""
    if profile.is_mock:
        tolerate_mock_group_sync()
        shorten_fetch_wait()
