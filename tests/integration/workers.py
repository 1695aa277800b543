"""Running `learnstream worker` as a real subprocess in tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learnstream.core.net import free_port


class WorkerProcess:
    """A Faust worker subprocess with its own data dir (own Qdrant folder) and app id."""

    def __init__(self, bootstrap: str, data_dir: Path, app_id: str, **env: str) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "worker.log"
        full_env = {
            **os.environ,
            "LEARNSTREAM_DATA_DIR": str(data_dir),
            "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LEARNSTREAM_WORKER__APP_ID": app_id,
            **env,
        }
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "learnstream",
                "worker",
                "--web-port",
                str(self.port),
                "--loglevel",
                os.environ.get("LEARNSTREAM_TEST_WORKER_LOGLEVEL", "warning"),
            ],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def metrics(self) -> str:
        """The worker's /metrics page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, wait_s: float = 0, **labels: str) -> float:
        """One sample's value from /metrics (0 if absent). With ``wait_s``, a page that does not
        answer (a busy worker) is asked again for up to that long, then it is an error; without,
        it counts as 0 (not serving yet)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        deadline = time.monotonic() + wait_s
        while True:
            try:
                page = self.metrics()
                break
            except OSError as exc:
                if not wait_s:
                    return 0.0
                if time.monotonic() >= deadline:
                    raise AssertionError(f"/metrics did not answer in {wait_s:g} s: {exc}") from exc
                time.sleep(0.5)
        for line in page.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return 0.0

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


# A group member killed with -9 is noticed after the session timeout: short ones keep the
# fault tests' failovers quick (Faust's default on Kafka is 60 s, librdkafka's 45 s).
FAST_FAILOVER_WORKER = {"LEARNSTREAM_WORKER__SESSION_TIMEOUT_S": "10"}
FAST_FAILOVER_SINK = {
    "LEARNSTREAM_KAFKA__CONSUMER_EXTRA": json.dumps(
        {"session.timeout.ms": "10000", "heartbeat.interval.ms": "2000"}
    )
}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """``predicate()`` once it is truthy; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class Service:
    """`learnstream ARGS` as a subprocess, logging to ``log``; SIGTERM on stop."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Sink(Service):
    """`learnstream sink` in ``group``, writing to the session's PostgreSQL."""

    def __init__(self, bootstrap: str, pg_url: str, group: str, log: Path, **env: str) -> None:
        env = {
            **os.environ,
            "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LEARNSTREAM_POSTGRES__URL": pg_url,
            "LEARNSTREAM_DATA_DIR": str(log.parent / f"{log.stem}-data"),
            **env,
        }
        super().__init__(["sink", "--group", group], env, log)


def fault_report(
    scenario: str,
    *,
    sent: int,
    stored: int,
    distinct: int,
    recovery_s: float,
    where: str = "PostgreSQL rows",
) -> None:
    """Record one fault scenario's figures for `bench/bench_faults.py` (a JSON line in the
    file named by ``LS_FAULT_REPORT``; nothing when it is unset, as in CI)."""
    path = os.environ.get("LS_FAULT_REPORT")
    if not path:
        return
    row = {
        "scenario": scenario,
        "sent": sent,
        "stored": stored,
        "where": where,
        "lost": sent - distinct,
        "duplicated": stored - distinct,
        "recovery_s": round(recovery_s, 1),
    }
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
