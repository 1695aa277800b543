"""The one seam for what differs between a real Kafka/Redpanda and the dev broker (the mock).

A process picks its `BrokerProfile` once, from its settings (`profile_for`), and every
mock-only behaviour hangs off it: consumer-group timings, Faust's topic declaration and its
aiokafka patches (`streams.mockcompat`), replay's fallbacks (scanning partitions for
timestamps, committing offsets by joining the group), and whether topics can be created or
their configs described. On a real broker none of the mock's workarounds run.

librdkafka's mock cluster (``test.mock.num.brokers``) lacks CreateTopics, DeleteTopics,
DescribeConfigs, DescribeGroups and timestamp look-ups, auto-creates every topic with 4
partitions on first use, and completes a rebalance only after (session timeout - 1 s).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from learnstream.core.settings import Settings

MOCK_DEFAULT_PARTITIONS = 4


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class BrokerProfile:
    """What this broker can do, and the client settings that suit it."""

    name: Literal["kafka", "mock"]
    creates_topics: bool
    """CreateTopics works (``topics create``, the worker's own topic check, Faust's tables)."""
    describes_configs: bool
    describes_groups: bool
    """DescribeGroups works, so replay can name active members."""
    timestamp_index: bool
    """ListOffsets by timestamp answers (else replay scans partitions for the time)."""
    commit_by_joining: bool
    """Admin offset changes of a group that ever had members are refused (UNKNOWN_MEMBER_ID),
    so replay commits by briefly joining the group instead."""
    consumer_overrides: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    """Extra librdkafka properties for group consumers."""
    faust_session_timeout: float = 60.0
    faust_heartbeat_interval: float = 3.0
    compression: str | None = "lz4"

    @property
    def is_mock(self) -> bool:
        """True for the dev broker."""
        return self.name == "mock"


KAFKA = BrokerProfile(
    "kafka",
    creates_topics=True,
    describes_configs=True,
    describes_groups=True,
    timestamp_index=True,
    commit_by_joining=False,
)
MOCK = BrokerProfile(
    "mock",
    creates_topics=False,
    describes_configs=False,
    describes_groups=False,
    timestamp_index=False,
    commit_by_joining=True,
    # Short group timings keep joins and scale-outs quick on the mock (see module docs).
    consumer_overrides=_frozen({"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}),
    faust_session_timeout=8.0,
    faust_heartbeat_interval=1.0,
    compression=None,
)


def profile_for(settings: Settings) -> BrokerProfile:
    """The profile of the broker ``settings`` point at (`learnstream.core.kafka.is_dev_broker`)."""
    from learnstream.core.kafka import is_dev_broker

    return MOCK if is_dev_broker(settings) else KAFKA
