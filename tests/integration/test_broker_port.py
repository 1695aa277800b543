"""`learnstream broker --port`: the same address on every start, clients work through it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from learnstream.core.net import free_port

pytestmark = pytest.mark.integration


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    return {**env, "LEARNSTREAM_DATA_DIR": str(data_dir), **extra}


def _start(data_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "broker", *args],
        env=_env(data_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    record = data_dir / "broker.json"
    deadline = time.monotonic() + 30
    while not record.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"broker did not start: {proc.communicate(timeout=5)[0]}")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def _round_trip(bootstrap: str, topic: str, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, value)
    assert producer.flush(15) == 0
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                assert msg.value() == value
                return
        raise AssertionError(f"nothing consumed from {topic} through {bootstrap}")
    finally:
        consumer.close()


def test_fixed_port_gives_the_same_address_on_every_start(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    for run in range(2):
        proc = _start(tmp_path, "--port", str(port))
        try:
            assert (
                json.loads((tmp_path / "broker.json").read_text())["bootstrap_servers"] == address
            )
            config = subprocess.run(
                [sys.executable, "-m", "learnstream", "config"],
                env=_env(tmp_path),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert json.loads(config.stdout)["kafka"]["bootstrap_servers"] == address
            _round_trip(address, f"port-test-{run}", f"run {run}".encode())
        finally:
            out = _stop(proc)
        assert f"dev broker listening on {address}" in out
        assert not (tmp_path / "broker.json").exists()


def test_port_from_the_environment_and_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "learnstream", "broker"],
            env=_env(tmp_path, LEARNSTREAM_BROKER_PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port}" in lines[0] and "--port" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "broker.json").exists()
