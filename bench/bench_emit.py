"""Producer SDK benchmark (run by hand; figures go in the notes, never into tests).

1. Cost of `TelemetryProducer.emit` to the calling thread (median and p99, microseconds),
   against what a tool would write by hand — `json.dumps(event)` + bare confluent-kafka
   `Producer.produce` — measured in the same run, interleaved.
2. Sustained events/s from one process for ~1 KB events (emit through delivery
   acknowledged), against the bare producer (same settings: lz4, idempotent, linger 5 ms)
   sending the same events the same way, in the same run on the same broker.

    python bench/bench_emit.py [--calls 20000] [--sustained 200000]
                               [--broker mock|kafka] [--bootstrap HOST:PORT]

The broker (bench/brokers.py): the dev broker in-process (default), a fresh local Apache
Kafka (``--broker kafka``) or an existing cluster (``--bootstrap``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import BrokerInfo, add_broker_arguments, broker_from_args

from learnstream.core.settings import load_settings
from schemas.topics import telemetry_topic
from streams.producers import TelemetryProducer

BARE_TOPIC = "bench.bare"


def one_kb_event(i: int) -> dict[str, Any]:
    """A realistic AIDB completion of about 1 KB."""
    return {
        "event_type": "completion",
        "session_id": f"session-{i % 64}",
        "query": "How do I configure a static IP address for eth0 in NixOS networking?",
        "response": (
            "Set networking.interfaces.eth0.ipv4.addresses in configuration.nix, then rebuild. "
            '```nix\nnetworking.interfaces.eth0.ipv4.addresses = [ { address = "192.0.2.10"; '
            'prefixLength = 24; } ];\nnetworking.defaultGateway = "192.0.2.1";\n```\n'
            "Run `sudo nixos-rebuild switch` and check with `ip addr show eth0`. " * 3
        )[:760],
        "llm_used": "local",
        "model": "Qwen2.5-Coder-7B",
        "tokens_input": 450,
        "tokens_output": 280,
        "latency_ms": 360,
        "success": True,
        "timestamp": "2026-11-02T09:14:05Z",
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def main() -> None:
    """Run both measurements and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--sustained", type=int, default=200_000)
    add_broker_arguments(ap)
    args = ap.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-emit-"))
    with broker_from_args(args, data_dir / "broker") as broker:
        run(args, broker, data_dir)


def bare_producer(bootstrap: str) -> Producer:
    """The producer a tool would write by hand, with the SDK's settings."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )


def bare_sustained(bare: Producer, events: list[dict[str, Any]], n: int) -> tuple[float, int]:
    """(seconds, pending) to send ``n`` events with json.dumps + bare produce, through flush."""
    t0 = time.perf_counter()
    for i in range(n):
        ev = events[i % 1000]
        value, key = json.dumps(ev).encode(), ev["session_id"].encode()
        while True:
            try:
                bare.produce(BARE_TOPIC, value, key=key)
                break
            except BufferError:  # the SDK queues; the bare client waits for room
                bare.poll(0.01)
        bare.poll(0)
    pending = bare.flush(300)
    return time.perf_counter() - t0, pending


def run(args: argparse.Namespace, broker: BrokerInfo, data_dir: Path) -> None:
    """Both measurements on ``broker``, then the table."""
    sdk_topic = telemetry_topic("aidb")
    broker.create_topics([BARE_TOPIC, sdk_topic])
    settings = load_settings(data_dir=data_dir, kafka={"bootstrap_servers": broker.bootstrap})
    events = [one_kb_event(i) for i in range(1000)]
    print(f"broker: {broker.label}")
    print(f"event size: {len(json.dumps(events[0]))} bytes; topics {sdk_topic}, {BARE_TOPIC}")

    bare = bare_producer(broker.bootstrap)
    sdk = TelemetryProducer("aidb", settings, registry=CollectorRegistry())
    bare_ns: list[float] = []
    emit_ns: list[float] = []
    clock = time.perf_counter_ns
    for i in range(args.calls):
        ev = events[i % 1000]
        t = clock()
        bare.produce(BARE_TOPIC, json.dumps(ev).encode(), key=ev["session_id"].encode())
        bare_ns.append(clock() - t)
        bare.poll(0)
        t = clock()
        sdk.emit(ev)
        emit_ns.append(clock() - t)
    bare.flush(30)
    sdk.flush(60)
    b50, b99 = statistics.median(bare_ns) / 1000, percentile(bare_ns, 99) / 1000
    e50, e99 = statistics.median(emit_ns) / 1000, percentile(emit_ns, 99) / 1000

    t0 = time.perf_counter()
    for i in range(args.sustained):
        sdk.emit(events[i % 1000])
    t_emit = time.perf_counter() - t0
    pending = sdk.flush(300)
    elapsed = time.perf_counter() - t0
    sdk.close()
    bare_s, bare_pending = bare_sustained(bare, events, args.sustained)

    rows = [
        (f"emit, calling-thread median (µs, {args.calls} calls)", e50, b50, "{:.2f}"),
        ("emit, calling-thread p99 (µs)", e99, b99, "{:.2f}"),
        (
            f"sustained, {args.sustained} x ~1 KB delivered (events/s)",
            args.sustained / elapsed,
            args.sustained / bare_s,
            "{:,.0f}",
        ),
    ]
    print()
    print(f"broker: {broker.label}")
    print("load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("baseline: json.dumps + bare confluent-kafka Producer.produce (lz4, idempotent,")
    print("linger 5 ms), same run, same broker; sustained: produce loop through flush")
    print(f"{'figure':52} {'SDK':>10} {'baseline':>10} {'ratio':>6}")
    for name, value, base, fmt in rows:
        print(f"{name:52} {fmt.format(value):>10} {fmt.format(base):>10} {value / base:>6.2f}")
    print(
        f"sustained: emit loop alone {t_emit:.2f}s, delivered after {elapsed:.2f}s "
        f"(pending after flush {pending}); baseline {bare_s:.2f}s (pending {bare_pending})"
    )


if __name__ == "__main__":
    main()
