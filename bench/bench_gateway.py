"""HTTP ingest gateway benchmark (run by hand; figures go in the notes, never into tests).

Starts a broker (bench/brokers.py: the dev broker in-process by default, ``--broker kafka`` a
fresh local Apache Kafka, ``--bootstrap`` an existing cluster) and the gateway on an
ephemeral loopback port, then posts NDJSON batches of realistic ~1 KB events over keep-alive
connections from a few client threads, and prints events/s and request latency (p50/p99,
ms). Bounded by a batch count and a time limit; nothing leaves loopback (unless
``--bootstrap`` points elsewhere).

Baseline, same run and broker: the same events (the NDJSON lines as they are) sent by one
bare confluent-kafka producer with the gateway producer's settings (lz4, idempotent, linger
5 ms), produce loop through flush: what the broker and client take without HTTP, parsing and
validation.

    python bench/bench_gateway.py [--batches 200] [--batch-size 100] [--clients 4]
                                  [--max-seconds 120] [--broker mock|kafka]
                                  [--bootstrap HOST:PORT]

The clients run in the same process as the gateway (and share its GIL), so the figures are a
floor for a gateway with its own process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokers import BrokerInfo, add_broker_arguments, broker_from_args

from learnstream.core.settings import load_settings
from schemas.topics import DLQ, telemetry_topic
from streams.producers.gateway import GatewayServer, make_gateway

BARE_TOPIC = "bench.bare"


def vscode_event(i: int) -> dict[str, Any]:
    """A realistic VSCode completion event of about 1 KB (the gateway's main client)."""
    return {
        "event_type": "completion",
        "session_id": f"vscode-session-{i % 64:04d}",
        "extension": "continue",
        "model_used": "Qwen2.5-Coder-7B-Instruct",
        "success": True,
        "user_feedback": 1 if i % 3 else 0,
        "latency_ms": 180 + i % 250,
        "prompt": (
            "Complete the function that parses the NixOS module options and returns the "
            "networking interfaces with their IPv4 addresses, skipping disabled ones. "
        )
        * 2,
        "completion": (
            "    interfaces = {}\n    for name, opts in config.get('interfaces', {}).items():\n"
            "        if not opts.get('enable', True):\n            continue\n"
            "        addrs = [a['address'] for a in opts.get('ipv4', {}).get('addresses', [])]\n"
            f"        interfaces[name] = addrs  # request {i}\n    return interfaces\n"
        ),
        "context": {
            "file": f"src/nixos/net_{i % 17}.py",
            "language": "python",
            "cursor_line": 40 + i % 400,
            "prefix_chars": 1800 + i % 900,
        },
        "timestamp": "2026-11-02T09:14:05Z",
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    """POST one NDJSON batch on a keep-alive connection; returns the status."""
    conn.request(
        "POST", "/v1/events/vscode", body=body, headers={"Content-Type": "application/x-ndjson"}
    )
    resp = conn.getresponse()
    resp.read()
    return resp.status


def run_clients(
    server: GatewayServer, bodies: list[bytes], batches: int, clients: int, max_seconds: float
) -> tuple[list[float], list[int]]:
    """Post ``batches`` bodies from ``clients`` threads; request latencies (s) and failures."""
    latencies: list[float] = []
    failures: list[int] = []
    next_batch = iter(range(batches))
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        mine: list[float] = []
        while time.monotonic() < deadline:
            with lock:
                n = next(next_batch, None)
            if n is None:
                break
            t = time.perf_counter()
            status = post(conn, bodies[n % len(bodies)])
            mine.append(time.perf_counter() - t)
            if status != 202:
                failures.append(status)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures


def bare_rate(bootstrap: str, bodies: list[bytes], events: int) -> tuple[float, int]:
    """(events/s, pending) of one bare producer sending ``events`` of the NDJSON lines."""
    lines = [line for body in bodies for line in body.splitlines()]
    keys = [json.loads(line)["session_id"].encode() for line in lines]
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    for line, key in zip(lines[:100], keys, strict=False):  # warm, as the gateway's producer
        p.produce(BARE_TOPIC, line, key=key)
    p.flush(30)
    t0 = time.perf_counter()
    for i in range(events):
        while True:
            try:
                p.produce(BARE_TOPIC, lines[i % len(lines)], key=keys[i % len(lines)])
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    pending = p.flush(120)
    return events / (time.perf_counter() - t0), pending


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200, help="NDJSON requests in total")
    ap.add_argument("--batch-size", type=int, default=100, help="events per request")
    ap.add_argument("--clients", type=int, default=4, help="client threads (one connection each)")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop posting after this")
    add_broker_arguments(ap)
    args = ap.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    with broker_from_args(args, data_dir / "broker") as broker:
        run(args, broker, data_dir)


def run(args: argparse.Namespace, broker: BrokerInfo, data_dir: Path) -> None:
    """The gateway on ``broker``, then the bare producer; the table."""
    broker.create_topics([telemetry_topic("vscode"), DLQ.name, BARE_TOPIC])
    settings = load_settings(data_dir=data_dir, kafka={"bootstrap_servers": broker.bootstrap})
    registry = CollectorRegistry()
    server = make_gateway(settings, registry=registry, host="127.0.0.1", port=0)
    server.start()

    # Bodies are built up front so the clients cost the shared GIL as little as possible.
    bodies = [
        "".join(
            json.dumps(vscode_event(b * args.batch_size + i)) + "\n" for i in range(args.batch_size)
        ).encode()
        for b in range(16)
    ]
    avg_event = sum(len(b) for b in bodies) / (len(bodies) * args.batch_size)
    print(f"broker: {broker.label}")
    print(
        f"gateway {server.url}; {args.batches} NDJSON batches of {args.batch_size} events "
        f"(~{avg_event:.0f} bytes each) from {args.clients} keep-alive clients"
    )
    warm = http.client.HTTPConnection(server.host, server.port, timeout=30)
    for body in bodies[:4]:
        assert post(warm, body) == 202
    warm.close()
    server.producer.flush(30)

    t0 = time.perf_counter()
    latencies, failures = run_clients(server, bodies, args.batches, args.clients, args.max_seconds)
    accepted_s = time.perf_counter() - t0
    pending = server.producer.flush(120)
    delivered_s = time.perf_counter() - t0
    delivered = registry.get_sample_value(
        "learnstream_producer_delivered_total", {"source": "vscode"}
    )
    server.close()

    requests = len(latencies)
    events = requests * args.batch_size
    base, base_pending = bare_rate(broker.bootstrap, bodies, max(events, 1))
    ms = [x * 1000 for x in latencies]
    print(f"requests: {requests} ({len(failures)} not 202: {sorted(set(failures))})")
    print(f"producer delivered counter (warm-up included): {delivered or 0:.0f}")
    print()
    print(f"broker: {broker.label}")
    print("load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"baseline: bare confluent-kafka producer, the same {events} NDJSON lines, same run")
    print(f"{'figure':52} {'gateway':>10} {'baseline':>10}")
    rows = [
        ("accepted (events/s)", f"{events / accepted_s:,.0f}", ""),
        ("  requests/s", f"{requests / accepted_s:,.1f}", ""),
        (
            f"delivered to the broker (events/s; pending {pending} / {base_pending})",
            f"{events / delivered_s:,.0f}",
            f"{base:,.0f}",
        ),
        ("request latency p50 (ms)", f"{statistics.median(ms):.1f}", ""),
        ("request latency p99 (ms)", f"{percentile(ms, 99):.1f}", ""),
        ("request latency max (ms)", f"{max(ms):.1f}", ""),
    ]
    for name, value, baseline in rows:
        print(f"{name:52} {value:>10} {baseline:>10}")


if __name__ == "__main__":
    main()
