"""Fake confluent-kafka clients for the consumer processes' unit tests (the sink, the trainer),
passed in through their ``consumer=`` / ``producer=`` arguments (`consumers.base`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class FakeMessage:
    """A consumed record, as `confluent_kafka.Message` answers for it (never an error)."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
    ) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value
        self._k = key if key is not None else f"k{offset}".encode()

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None


class FakeTP:
    """A `confluent_kafka.TopicPartition`."""

    def __init__(self, topic: str, partition: int, offset: int = -1001) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.error: Any = None


class FakeConsumer:
    """Serves ``batches`` one per ``consume()``, then nothing; records its calls.

    ``calls``: consume, pause (once per pausing), poll, resume, commit, subscribe, close.
    ``commits``: the (topic, partition, offset) of each synchronous commit, one sorted list per
    call; ``committed``: all of them in order. ``on_poll`` runs in each ``poll()`` (while
    paused) and what it returns is the record polled; ``on_consume`` runs inside
    ``consume()``, like a rebalance callback. The next ``failing_commits`` commits are refused
    (each partition with an error); ``seeks`` lists every seek.
    """

    def __init__(
        self, batches: list[list[FakeMessage]], assigned: list[FakeTP] | None = None
    ) -> None:
        self.batches = batches
        self.assigned = assigned if assigned is not None else [FakeTP("t", 0), FakeTP("t", 1)]
        self.calls: list[str] = []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.paused = False
        self.on_poll: Callable[[], FakeMessage | None] | None = None
        self.on_consume: Callable[[], None] | None = None
        self.failing_commits = 0  # the next commits that the broker refuses
        self.seeks: list[tuple[str, int, int]] = []

    @property
    def committed(self) -> list[tuple[str, int, int]]:
        """Every committed (topic, partition, offset), in commit order."""
        return [tp for commit in self.commits for tp in commit]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        self.calls.append("consume")
        assert not self.paused, "consumed while paused"
        if self.on_consume is not None:
            self.on_consume()
        return self.batches.pop(0) if self.batches else []

    def poll(self, timeout: float) -> FakeMessage | None:
        self.calls.append("poll")
        assert self.paused, "polled for records while not paused"
        time.sleep(min(timeout, 0.002))
        return self.on_poll() if self.on_poll is not None else None

    def assignment(self) -> list[FakeTP]:
        return list(self.assigned)

    def pause(self, partitions: list[Any]) -> None:
        if not self.paused:
            self.calls.append("pause")
        self.paused = True

    def resume(self, partitions: list[Any]) -> None:
        self.calls.append("resume")
        self.paused = False

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        assert asynchronous is False
        self.calls.append("commit")
        if self.failing_commits:
            self.failing_commits -= 1
            refused = [FakeTP(tp.topic, tp.partition, tp.offset) for tp in offsets]
            for tp in refused:
                tp.error = FakeError("REBALANCE_IN_PROGRESS")
            return refused
        self.commits.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))
        return offsets

    def seek(self, tp: Any) -> None:
        self.calls.append("seek")
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def position(self, partitions: list[Any]) -> list[Any]:
        return partitions

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.calls.append("subscribe")

    def close(self) -> None:
        self.calls.append("close")


class FakeError:
    """A delivery error (`confluent_kafka.KafkaError`)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


class FakeProducer:
    """Acknowledges on ``poll()``/``flush()``; the first ``fail`` deliveries fail. Each
    ``produce`` is also logged in ``calls`` (pass the consumer's to see the order of both)."""

    def __init__(self, calls: list[str] | None = None, fail: int = 0) -> None:
        self.calls = calls if calls is not None else []
        self.fail = fail
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, Any]]] = []
        self._waiting: list[Callable[[Any, Any], None]] = []

    def produce(
        self, topic: str, *, value: bytes, key: bytes | None, headers: Any, **kw: Any
    ) -> None:
        self.calls.append(f"produce {topic}")
        self._waiting.append(kw["on_delivery"])
        self.sent.append((topic, key, value, dict(headers)))

    def poll(self, timeout: float) -> int:
        while self._waiting:
            callback = self._waiting.pop(0)
            if self.fail:
                self.fail -= 1
                self.sent.pop()
                callback(FakeError("broker down"), None)
            else:
                callback(None, None)
        return 0

    def flush(self, timeout: float) -> int:
        return self.poll(timeout)
