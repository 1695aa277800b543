"""Producer SDK benchmark (run by hand; figures go in the notes, never into tests).

1. Cost of `TelemetryProducer.emit` to the calling thread (median and p99, microseconds),
   against what a tool would write by hand — `json.dumps(event)` + bare confluent-kafka
   `Producer.produce` — measured in the same run, interleaved.
2. Sustained events/s from one process to the dev broker for ~1 KB events (emit through
   delivery acknowledged).

    python bench/bench_emit.py [--calls 20000] [--sustained 200000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from learnstream.devbroker import DevBroker
from learnstream.settings import load_settings
from streams.producers import TelemetryProducer


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
    args = ap.parse_args()

    broker = DevBroker()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            broker.poll(0.2)

    threading.Thread(target=serve, daemon=True).start()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-emit-"))
    settings = load_settings(
        data_dir=data_dir, kafka={"bootstrap_servers": broker.bootstrap_servers}
    )
    events = [one_kb_event(i) for i in range(1000)]
    print(f"event size: {len(json.dumps(events[0]))} bytes")

    bare = Producer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "linger.ms": 5,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    sdk = TelemetryProducer("aidb", settings, registry=CollectorRegistry())
    bare_ns: list[float] = []
    emit_ns: list[float] = []
    clock = time.perf_counter_ns
    for i in range(args.calls):
        ev = events[i % 1000]
        t = clock()
        bare.produce("bench.bare", json.dumps(ev).encode(), key=ev["session_id"].encode())
        bare_ns.append(clock() - t)
        bare.poll(0)
        t = clock()
        sdk.emit(ev)
        emit_ns.append(clock() - t)
    bare.flush(30)
    sdk.flush(60)
    b50, b99 = statistics.median(bare_ns) / 1000, percentile(bare_ns, 99) / 1000
    e50, e99 = statistics.median(emit_ns) / 1000, percentile(emit_ns, 99) / 1000
    print(f"calling-thread cost over {args.calls} calls (µs):")
    print(f"  json.dumps + Producer.produce  median {b50:6.2f}  p99 {b99:6.2f}")
    print(f"  TelemetryProducer.emit         median {e50:6.2f}  p99 {e99:6.2f}")
    print(f"  ratio emit/bare                median {e50 / b50:6.2f}  p99 {e99 / b99:6.2f}")

    t0 = time.perf_counter()
    for i in range(args.sustained):
        sdk.emit(events[i % 1000])
    t_emit = time.perf_counter() - t0
    pending = sdk.flush(300)
    elapsed = time.perf_counter() - t0
    print(
        f"sustained: {args.sustained} events of ~1 KB delivered in {elapsed:.2f}s = "
        f"{args.sustained / elapsed:,.0f} events/s (emit loop alone {t_emit:.2f}s; "
        f"pending after flush {pending})"
    )
    sdk.close()
    stop.set()


if __name__ == "__main__":
    main()
