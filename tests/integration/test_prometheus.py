"""A real Prometheus scrapes a whole pipeline run; every Grafana dashboard query has data.

The processes run as an operator runs them (`learnstream worker`, `sink`, `trainer`,
`gateway`, `produce tail`), each serving /metrics; Prometheus (the Debian `prometheus`
binary, on loopback, a temporary config and data dir, a 1 s scrape interval) scrapes them under
the job names of deploy/prometheus/prometheus.yml. The run publishes the sample telemetry
through the gateway and a tailer, some invalid records to every stage that dead-letters, points
extraction at an LLM endpoint that fails (the heuristic extractor takes over), and trains the
tiny model once. Then each query of deploy/grafana/dashboards/learnstream.json is sent to
Prometheus's /api/v1/query and must return at least one series.

Needs `prometheus` (apt-get install prometheus): skipped without it, failed under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from learnstream.core.net import free_port
from tests.conftest import EXAMPLES
from tests.integration.conftest import BrokerUnderTest
from tests.integration.workers import Service as LearnstreamService
from tests.integration.workers import WorkerProcess, wait_for
from tests.tinymodel import RecordingServer, build_tiny_model, write_dataset
from tests.unit.test_deploy import EXTERNAL_METRICS, dashboard_exprs, promql_metric_names

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = uuid.uuid4().hex[:8]
TOKEN = f"token-{RUN}"
# Grafana's $__rate_interval is at least four scrape intervals; with 1 s scrapes, 15 s holds
# enough samples for rate() while the run is short.
RATE_INTERVAL = "15s"
# Settings that make the sample files fire one training run of the tiny model, quickly, and
# promote it (so the active-adapter panels have a value).
PIPELINE_ENV = {
    "LEARNSTREAM_TRIGGERS__LEARNINGS_THRESHOLD": "3",
    "LEARNSTREAM_TRIGGERS__MIN_DATASET_SIZE": "3",
    "LEARNSTREAM_TRIGGERS__CHECK_INTERVAL_S": "2",
    "LEARNSTREAM_TRAINING__MAX_STEPS": "12",
    "LEARNSTREAM_TRAINING__BATCH_SIZE": "8",
    "LEARNSTREAM_TRAINING__LEARNING_RATE": "0.005",
    "LEARNSTREAM_TRAINING__LORA_RANK": "8",
    "LEARNSTREAM_TRAINING__LORA_ALPHA": "16",
    "LEARNSTREAM_TRAINING__LORA_DROPOUT": "0.0",
    "LEARNSTREAM_TRAINING__MAX_LENGTH": "128",
    "LEARNSTREAM_TRAINING__DEVICE": "cpu",
    "LEARNSTREAM_TRAINING__MIN_EVAL_EXAMPLES": "5",
    "LEARNSTREAM_TRAINING__MIN_IMPROVEMENT": "0.0",
    "LEARNSTREAM_SUMMARY_INTERVAL_S": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def prometheus_binary() -> str:
    """The prometheus executable; skipped without it, except under CI=true."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (CI installs it: apt-get install prometheus)")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return path


class Service(LearnstreamService):
    """`learnstream ARGS` as a subprocess, logging to ``logs/<name>.log``; SIGTERM on stop."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        super().__init__(args, env, logs / f"{name}.log")


class Prometheus:
    """A real Prometheus on loopback scraping ``targets`` (job name -> host:port) every 1 s."""

    def __init__(self, binary: str, root: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = root / "prometheus.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ready, 60, f"Prometheus ready on {self.url}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            return False

    def query(self, expr: str) -> dict[str, Any]:
        """The /api/v1/query answer (status, data) for ``expr`` now."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:  # 400 for a bad query, with the error in JSON
            return dict(json.loads(exc.read()))

    def targets(self) -> dict[str, str]:
        """Job -> health of every active scrape target."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=10) as r:
            active = json.loads(r.read())["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, Grafana's variables filled in."""
    return [
        (title, expr.replace("$__rate_interval", RATE_INTERVAL))
        for title, expr in dashboard_exprs()
    ]


def external_only(expr: str) -> bool:
    """True for a query on metrics that only the broker's exporter provides (Redpanda's
    /public_metrics or kafka-exporter), never learnstream's processes."""
    return promql_metric_names(expr) <= EXTERNAL_METRICS


def _post(url: str, body: bytes, token: str | None = TOKEN) -> int:
    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _produce_raw(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for topic, value in records:
        producer.produce(topic, value, key=f"bad-{RUN}".encode())
    assert producer.flush(15) == 0


@pytest.fixture
def pipeline(
    own_broker: BrokerUnderTest, postgres_url: str, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """The pipeline's processes, each serving /metrics on a port of its own, on a broker of
    their own (the example files it sends must not reach the other tests' workers)."""
    binary = prometheus_binary()
    bootstrap = own_broker.bootstrap_servers
    model = str(build_tiny_model(tmp_path / "model"))
    data = tmp_path / "data"  # shared by the worker (writes the dataset) and the trainer
    logs = tmp_path / "logs"
    logs.mkdir()
    # A dataset that already holds enough examples for an evaluation the gate can decide on;
    # the run's own learnings are appended to it.
    write_dataset(data / "dataset" / "dataset.jsonl", queries=40)
    llm = RecordingServer()
    llm.default = 500  # every extraction call fails; the heuristic extractor takes over
    base = {
        **os.environ,
        **PIPELINE_ENV,
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "LEARNSTREAM_BASE_MODEL": model,
    }
    ports = {name: free_port() for name in ("sink", "trainer", "gateway", "tailer")}
    services: list[Service] = []
    worker: WorkerProcess | None = None
    prometheus: Prometheus | None = None
    try:
        worker = WorkerProcess(
            bootstrap,
            data,
            app_id=f"prometheus-{RUN}",
            **PIPELINE_ENV,
            LEARNSTREAM_BASE_MODEL=model,
            LEARNSTREAM_EXTRACT__LLM_BASE_URL=llm.url,
            LEARNSTREAM_EXTRACT__LLM_MODEL="failing-model",
            LEARNSTREAM_EXTRACT__MAX_RETRIES="0",
            LEARNSTREAM_EXTRACT__BREAKER_FAILURE_THRESHOLD="2",
        )
        services.append(
            Service(
                "sink",
                ["sink", "--group", f"prometheus-sink-{RUN}"],
                {
                    **base,
                    "LEARNSTREAM_POSTGRES__URL": postgres_url,
                    "LEARNSTREAM_DATA_DIR": str(tmp_path / "sink-data"),
                    "LEARNSTREAM_METRICS_PORT": str(ports["sink"]),
                },
                logs,
            )
        )
        services.append(
            Service(
                "trainer",
                ["trainer", "--group", f"prometheus-trainer-{RUN}"],
                {
                    **base,
                    "LEARNSTREAM_DATA_DIR": str(data),
                    "LEARNSTREAM_METRICS_PORT": str(ports["trainer"]),
                },
                logs,
            )
        )
        services.append(
            Service(
                "gateway",
                ["gateway", "--host", "127.0.0.1", "--port", str(ports["gateway"])],
                {
                    **base,
                    "LEARNSTREAM_DATA_DIR": str(tmp_path / "gateway-data"),
                    "LEARNSTREAM_GATEWAY__TOKEN": TOKEN,
                },
                logs,
            )
        )
        tailed = tmp_path / "ralph-events.jsonl"
        services.append(
            Service(
                "tailer",
                ["produce", "tail", "--source", "ralph", "--path", str(tailed)],
                {
                    **base,
                    "LEARNSTREAM_DATA_DIR": str(tmp_path / "tailer-data"),
                    "LEARNSTREAM_METRICS_PORT": str(ports["tailer"]),
                },
                logs,
            )
        )
        prometheus = Prometheus(
            binary,
            tmp_path,
            {
                "learnstream-worker": f"127.0.0.1:{worker.port}",
                "learnstream-sink": f"127.0.0.1:{ports['sink']}",
                "learnstream-trainer": f"127.0.0.1:{ports['trainer']}",
                "learnstream-gateway": f"127.0.0.1:{ports['gateway']}",
                "learnstream-tailer": f"127.0.0.1:{ports['tailer']}",
            },
        )
        yield {
            "bootstrap": bootstrap,
            "prometheus": prometheus,
            "worker": worker,
            "services": services,
            "gateway": f"http://127.0.0.1:{ports['gateway']}",
            "tailed": tailed,
            "llm": llm,
        }
    finally:
        for service in services:
            service.stop()
        if worker is not None:
            worker.stop()
        if prometheus is not None:
            prometheus.stop()
        llm.close()


def _diagnostics(pipeline: dict[str, Any]) -> str:
    parts = [f"--- worker\n{pipeline['worker'].log()[-2000:]}"]
    parts += [f"--- {s.name}\n{s.log()[-2000:]}" for s in pipeline["services"]]
    return "\n".join(parts)


@pytest.mark.timeout(720)  # a pipeline run with a training job, on a loaded CI machine
def test_prometheus_scrapes_every_process_and_every_dashboard_query_has_data(
    pipeline: dict[str, Any],
) -> None:
    prometheus: Prometheus = pipeline["prometheus"]
    worker: WorkerProcess = pipeline["worker"]

    # Every process is up and scraped.
    jobs = {"learnstream-worker", "learnstream-sink", "learnstream-trainer"}
    jobs |= {"learnstream-gateway", "learnstream-tailer"}
    wait_for(
        lambda: (
            worker.metric("learnstream_dataset_lines") > 0
            and all(h == "up" for h in prometheus.targets().values())
            and set(prometheus.targets()) == jobs
        ),
        240,
        f"every target up: {prometheus.targets()}\n{_diagnostics(pipeline)}",
    )

    # The sample telemetry: vscode, aidb and hybrid through the gateway (one invalid line and
    # one request without the token among them), ralph through the tailer (with an invalid
    # line, which the tailer dead-letters at the edge).
    gateway = pipeline["gateway"]
    for source in ("vscode", "aidb", "hybrid"):
        body = (EXAMPLES / f"{source}-events.jsonl").read_bytes()
        assert _post(f"{gateway}/v1/events/{source}", body) == 202
    # The same aidb interactions once more under new event ids (the sample lines carry none):
    # their patterns merge into the ones just learned.
    body = (EXAMPLES / "aidb-events.jsonl").read_bytes()
    assert _post(f"{gateway}/v1/events/aidb", body) == 202
    assert _post(f"{gateway}/v1/events/vscode", b'{"event_type": "nonsense"}\n') == 422
    assert _post(f"{gateway}/v1/events/vscode", b"{}\n", token=None) == 401
    tailed: Path = pipeline["tailed"]
    tailed.write_bytes((EXAMPLES / "ralph-events.jsonl").read_bytes() + b'{"event": 42}\n')
    # Records that only the later stages can refuse: bytes that are no event on a telemetry
    # topic (the worker), no scored interaction (the sink) and no trigger (the trainer).
    _produce_raw(
        pipeline["bootstrap"],
        [
            ("telemetry.ralph", b"not json " + RUN.encode()),
            ("interactions.scored", b'{"not": "scored"}'),
            ("training.triggers", b'{"not": "a trigger"}'),
        ],
    )

    # One training run, promoted: it needs the learnings above, the trigger and the trainer.
    queries = dashboard_queries()
    assert len(queries) >= 30

    def missing() -> list[tuple[str, str]]:
        empty = []
        for title, expr in queries:
            answer = prometheus.query(expr)
            assert answer["status"] == "success", f"{title}: {expr}: {answer}"
            if not answer["data"]["result"] and not external_only(expr):
                empty.append((title, expr))
        return empty

    deadline = time.monotonic() + 420
    empty = missing()
    while empty and time.monotonic() < deadline:
        time.sleep(2)
        empty = missing()
    assert not empty, (
        "dashboard queries without data:\n"
        + "\n".join(f"  {title}: {expr}" for title, expr in empty)
        + "\n"
        + _diagnostics(pipeline)
    )
    # The extraction calls really went to the (failing) LLM endpoint.
    assert pipeline["llm"].calls

    # Counters that the run must have moved, as Prometheus saw them.
    def value(expr: str) -> float:
        result = prometheus.query(expr)["data"]["result"]
        return sum(float(r["value"][1]) for r in result)

    assert value("sum(learnstream_events_consumed_total)") > 0
    assert value("sum(learnstream_gateway_events_accepted_total)") > 0
    assert value('sum(learnstream_gateway_requests_total{code="401"})') >= 1
    assert value("sum(learnstream_producer_delivered_total)") > 0
    assert value('sum(learnstream_training_runs_total{status="promoted"})') >= 1
    assert value("sum(learnstream_sink_rows_written_total)") > 0
    assert value("sum(learnstream_extract_llm_failures_total)") > 0
    assert value("sum(learnstream_patterns_merged_total)") > 0


def test_external_dashboard_queries_are_only_the_brokers_lag() -> None:
    # The only queries the pipeline's own processes cannot answer are the broker exporter's
    # consumer lag (Redpanda's /public_metrics; kafka-exporter on Apache Kafka).
    external = [(t, e) for t, e in dashboard_queries() if external_only(e)]
    assert [t for t, _ in external] == ["Consumer group lag (Redpanda)"]
    assert re.search(r"redpanda_kafka_consumer_group_lag_sum", external[0][1])
