"""The deploy artefacts agree with the code (no services needed).

Checks ``deploy/`` (compose, Kubernetes, Prometheus, Grafana, env files), the Dockerfiles and
the README's "Operating learnstream" section: they parse; every ``learnstream`` command they run
exists in the CLI; every ``LEARNSTREAM_*`` variable is a settings field (and the values given
validate); every topic and consumer group is a real one; ports match the settings defaults; and
every metric in the dashboard and the alerts is one the code registers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from learnstream.core.settings import (
    GatewaySettings,
    Settings,
    WorkerSettings,
    env_name,
    load_settings,
)
from schemas.topics import TOPICS

yaml = pytest.importorskip("yaml", reason="PyYAML parses the deploy manifests")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_GPU = DEPLOY / "k8s-gpu"
COMPOSE = DEPLOY / "compose.yaml"
ENV_FILE = DEPLOY / "learnstream.env"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "learnstream.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.gpu"]
SECTION = "## Operating learnstream"

APP_ID = WorkerSettings().app_id
# Topics outside the registry that the worker creates itself (streams/agents/triggers.py: the
# internal topic "<app id>-improvement" and Faust's changelog of the "improvement" table).
INTERNAL_TOPICS = {f"{APP_ID}-improvement", f"{APP_ID}-improvement-changelog"}
# Metrics not registered by learnstream: Prometheus' own `up`, Redpanda's /public_metrics
# (consumer lag, Redpanda >= 25.1) and kafka-exporter's lag (Apache Kafka).
EXTERNAL_METRICS = {
    "up",
    "redpanda_kafka_consumer_group_lag_sum",
    "redpanda_kafka_consumer_group_lag_max",
    "kafka_consumergroup_lag",
}
LEARNSTREAM_SERVICES = {"topics-init", "gateway", "worker", "sink", "trainer"}


# --- helpers ---------------------------------------------------------------------------------


def text_files() -> list[Path]:
    """Every text file under deploy/ plus the Dockerfiles and .dockerignore."""
    files = [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return [*files, *DOCKERFILES, ROOT / ".dockerignore"]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert text.count(SECTION) == 1, f"README.md needs exactly one {SECTION!r}"
    return text[text.index(SECTION) :]


def all_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in text_files()}
    texts["README.md#operating"] = readme_section()
    return texts


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE)
    return doc


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in load_yaml(K8S / name)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def read_env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines; with ``commented``, also the commented-out ``# LEARNSTREAM_...=`` ones."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if commented and re.match(r"#\s*LEARNSTREAM_\w+=", line):
            line = line.lstrip("#").strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        env[key.strip()] = value
    return env


def settings_env_names() -> set[str]:
    """Every environment variable a `Settings` field (or group of fields) is read from."""
    names: set[str] = set()

    def walk(model: type[BaseModel], loc: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            here = (*loc, name)
            names.add(env_name(here))
            annotation = field.annotation
            candidates = getattr(annotation, "__args__", None) or (annotation,)
            for candidate in candidates:
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    walk(candidate, here)

    walk(Settings, ())
    return names


def validate_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("LEARNSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, with ``${VAR:-default}`` resolved to its default."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    resolved = {}
    for key, value in environment.items():
        text = str(value)
        resolved[key] = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    return resolved


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield obj["metadata"]["name"], container


def learnstream_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `learnstream`) for every command deploy/, Docker and README run."""
    found: list[tuple[str, list[str]]] = []
    for name, service in compose()["services"].items():
        if name in LEARNSTREAM_SERVICES:
            found.append((f"compose {name}", list(service["command"])))
    for name, container in containers():
        found.append((f"k8s {name}", list(container["args"])))
    for dockerfile in DOCKERFILES:
        for match in re.finditer(r"^CMD (\[.*\])", dockerfile.read_text(), re.M):
            argv = json.loads(match.group(1))
            if argv and not argv[0].startswith("-"):
                found.append((dockerfile.name, argv))
    # Commands written out in text: in backticks, and in Markdown's fenced code blocks.
    for where, text in all_texts().items():
        code = re.findall(r"`([^`\n]+)`", text)
        if where.endswith((".md", "#operating")):
            code += re.findall(r"```.*?```", text, re.S)
        for snippet in code:
            for match in re.finditer(r"(?<![\w./-])learnstream((?: [a-z][a-z-]*){1,2})", snippet):
                found.append((where, match.group(1).split()))
    return found


def registered_metric_names() -> set[str]:
    """Sample names of every metric the code registers, with prometheus_client's suffixes."""
    from consumers.telemetry_sink import SinkMetrics
    from consumers.trainer import TrainerMetrics
    from extractors.metrics import ExtractMetrics
    from learnstream.core.metrics import StreamMetrics
    from streams.producers.gateway import GatewayMetrics
    from streams.producers.metrics import ProducerMetrics
    from trainers.metrics import TrainingMetrics

    registry = CollectorRegistry()
    for metrics in (
        StreamMetrics,
        ProducerMetrics,
        ExtractMetrics,
        TrainingMetrics,
        SinkMetrics,
        TrainerMetrics,
        GatewayMetrics,
    ):
        metrics.on(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = match.groups()
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    doc = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in panels(doc["panels"])
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- parsing -------------------------------------------------------------------------------


def test_every_manifest_parses() -> None:
    yaml_files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")]
    assert len(yaml_files) >= 15
    for path in yaml_files:
        assert load_yaml(path), f"{path} is empty"
    json.loads(DASHBOARD.read_text())
    for path in (ENV_FILE, K8S / "config.env"):
        assert read_env_file(path, commented=True)


def test_topics_script_is_generated_from_the_registry() -> None:
    from learnstream.topicadmin import rpk_script

    assert (DEPLOY / "redpanda" / "topics.sh").read_text() == rpk_script()


# --- commands and settings -----------------------------------------------------------------


def test_every_learnstream_command_exists() -> None:
    from learnstream.cli import cli

    found = learnstream_commands()
    assert {"topics", "gateway", "worker", "sink", "trainer"} <= {argv[0] for _, argv in found}
    for where, argv in found:
        command = cli.commands.get(argv[0])
        assert command is not None, f"{where}: no command `learnstream {argv[0]}`"
        if isinstance(command, click.Group):
            assert len(argv) > 1, f"{where}: `learnstream {argv[0]}` needs a subcommand"
            assert argv[1] in command.commands, f"{where}: no `learnstream {' '.join(argv[:2])}`"


def test_every_learnstream_variable_is_a_setting() -> None:
    valid = settings_env_names()
    seen = set()
    for where, text in all_texts().items():
        for name, star in re.findall(r"\b(LEARNSTREAM_[A-Z0-9_]*)(\*?)", text):
            seen.add(name)
            if star or name == "LEARNSTREAM_":  # a pattern: LEARNSTREAM_TRAINING__*, _SSL_*_...
                assert any(v.startswith(name) for v in valid), f"{where}: {name}* matches nothing"
            else:
                assert name in valid, f"{where}: {name} is not a field of learnstream.core.settings"
    assert {
        "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS",
        "LEARNSTREAM_POSTGRES__URL",
        "LEARNSTREAM_QDRANT__URL",
        "LEARNSTREAM_GATEWAY__TOKEN",
        "LEARNSTREAM_KAFKA__SASL_PASSWORD",
    } <= seen


def test_compose_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    for name in LEARNSTREAM_SERVICES:
        assert services[name]["env_file"] == ENV_FILE.name
        env = {**read_env_file(ENV_FILE), **compose_env(services[name])}
        settings = validate_env(env, monkeypatch)
        assert settings.kafka.bootstrap_servers == "redpanda:9092"
        assert settings.qdrant.url, "scaled workers need a Qdrant server"
        assert settings.postgres.url is not None
    gateway = validate_env(
        {**read_env_file(ENV_FILE), **compose_env(services["gateway"])}, monkeypatch
    )
    assert gateway.gateway.host == "0.0.0.0"
    assert gateway.gateway.token is not None
    # The commented security variant is valid too.
    secure = validate_env(read_env_file(ENV_FILE, commented=True), monkeypatch)
    assert secure.kafka.security_protocol == "SASL_SSL"
    assert secure.kafka.security_config()["sasl.mechanism"] == "SCRAM-SHA-256"


def test_k8s_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = by_kind("Secret")["learnstream-secrets"]
    env = {**read_env_file(K8S / "config.env"), **secret["stringData"]}
    settings = validate_env(env, monkeypatch)
    assert settings.gateway.host == "0.0.0.0"
    assert settings.qdrant.url and settings.postgres.url is not None
    commented = {
        key: value.strip()
        for key, value in re.findall(
            r"^\s*#\s*(LEARNSTREAM_\w+):\s*(.+)$", (K8S / "secret.yaml").read_text(), re.M
        )
    }
    assert validate_env({**env, **commented}, monkeypatch).kafka.security_protocol == "SASL_SSL"
    for name, container in containers():
        refs = {
            ref.get("configMapRef", ref.get("secretRef", {}))["name"]
            for ref in container["envFrom"]
        }
        assert refs == {"learnstream-config", "learnstream-secrets"}, name


# --- topics, groups, ports -----------------------------------------------------------------


def test_every_topic_is_known() -> None:
    known = set(TOPICS) | INTERNAL_TOPICS
    pattern = r"(?<![\w.])((?:telemetry|interactions|patterns|training)\.[a-z][a-z_]*)(?![\w/])"
    rpk = (
        r"rpk topic (?:consume|describe|add-partitions|alter-config|create|produce) ([^-\n][^\n]*)"
    )
    for where, text in all_texts().items():
        for name in re.findall(pattern, text):
            assert name in known, f"{where}: unknown topic {name}"
        for args in re.findall(rpk, text):
            for word in args.split():
                if word.startswith("-") or word in ("\\", "$REPLICAS", '"$REPLICAS"'):
                    break
                assert word.strip("`'\").,") in known, f"{where}: rpk on unknown topic {word}"
                if word.endswith((")", ".", ",")):  # the end of a sentence or parenthesis
                    break


def test_every_consumer_group_is_real() -> None:
    from consumers.telemetry_sink import DEFAULT_GROUP as SINK_GROUP
    from consumers.trainer import DEFAULT_GROUP as TRAINER_GROUP

    groups = {APP_ID, SINK_GROUP, TRAINER_GROUP}
    assert read_env_file(ENV_FILE)["LEARNSTREAM_WORKER__APP_ID"] == APP_ID
    assert read_env_file(K8S / "config.env")["LEARNSTREAM_WORKER__APP_ID"] == APP_ID
    for where, text in all_texts().items():
        for verb, group in re.findall(r"rpk group (describe|seek|delete) ([\w.-]+)", text):
            # A seek may save offsets into a backup group of a real one.
            assert group in groups or (
                verb == "seek" and group.removesuffix("-backup") in groups
            ), f"{where}: unknown group {group}"
        for group in re.findall(r"--to-group ([\w.-]+)", text):
            assert group.removesuffix("-backup") in groups, f"{where}: unknown group {group}"
    (keda,) = load_yaml(K8S / "keda-scaledobject.yaml")
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == APP_ID
    assert keda["spec"]["scaleTargetRef"]["name"] == "learnstream-worker"
    assert keda["spec"]["maxReplicaCount"] <= max(t.partitions for t in TOPICS.values())
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    assert "keda-scaledobject.yaml" not in kustomization["resources"], "KEDA stays optional"


def test_ports_match_the_settings() -> None:
    gateway_port, web_port = GatewaySettings().port, WorkerSettings().web_port
    assert (gateway_port, web_port) == (8088, 6066)
    env = read_env_file(ENV_FILE)
    k8s_env = read_env_file(K8S / "config.env")
    for e in (env, k8s_env):
        assert int(e["LEARNSTREAM_GATEWAY__PORT"]) == gateway_port
        assert int(e["LEARNSTREAM_WORKER__WEB_PORT"]) == web_port
    metrics_port = int(env["LEARNSTREAM_METRICS_PORT"])
    assert int(k8s_env["LEARNSTREAM_METRICS_PORT"]) == metrics_port

    services = compose()["services"]
    expected = {
        "gateway": gateway_port,
        "worker": web_port,
        "sink": metrics_port,
        "trainer": metrics_port,
    }
    for name, port in expected.items():
        probe = " ".join(services[name]["healthcheck"]["test"])
        path = "/healthz" if name in ("gateway", "worker") else "/metrics"
        assert f":{port}{path}" in probe, f"compose {name} healthcheck"
    assert f"{gateway_port}:{gateway_port}" in services["gateway"]["ports"]
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 1
    assert "container_name" not in worker and "ports" not in worker, "--scale worker=N must work"

    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS)[0]["scrape_configs"]}
    assert jobs["learnstream-worker"]["dns_sd_configs"][0]["port"] == web_port
    assert jobs["learnstream-gateway"]["static_configs"][0]["targets"] == [
        f"gateway:{gateway_port}"
    ]
    assert jobs["learnstream-sink"]["dns_sd_configs"][0]["port"] == metrics_port
    assert jobs["learnstream-trainer"]["static_configs"][0]["targets"] == [
        f"trainer:{metrics_port}"
    ]
    assert jobs["redpanda"]["metrics_path"] == "/public_metrics"

    deployments = by_kind("Deployment")
    expected_k8s = {
        "learnstream-gateway": gateway_port,
        "learnstream-worker": web_port,
        "learnstream-sink": metrics_port,
        "learnstream-trainer": metrics_port,
    }
    assert set(deployments) == set(expected_k8s)
    for name, port in expected_k8s.items():
        template = deployments[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port), name
    for name, service in by_kind("Service").items():
        deployment = deployments[name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["port"] == expected_k8s[name]
    assert set(by_kind("Service")) == {"learnstream-gateway", "learnstream-worker"}


# --- Kubernetes and Docker -----------------------------------------------------------------


def test_k8s_base() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    kinds = {(o["kind"], o["metadata"]["name"]) for o in k8s_objects()}
    assert ("Namespace", "learnstream") in kinds
    assert ("Job", "learnstream-topics-init") in kinds
    (pvc,) = by_kind("PersistentVolumeClaim").values()
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts_pvc = set()
    for name, deployment in by_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        (container,) = spec["containers"]
        assert container["image"] == "learnstream", name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        assert "readinessProbe" in container and "livenessProbe" in container, name
        for volume in spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim == pvc["metadata"]["name"]:
                mounts_pvc.add(name)
    assert mounts_pvc == {"learnstream-worker", "learnstream-trainer"}
    (job_container,) = by_kind("Job")["learnstream-topics-init"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert job_container["args"] == ["topics", "create"]
    (patch,) = load_yaml(K8S_GPU / "trainer-gpu-patch.yaml")
    assert patch["metadata"]["name"] == "learnstream-trainer"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    def build(path: Path) -> list[dict[str, Any]]:
        out = subprocess.run(
            ["kubectl", "kustomize", str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return [doc for doc in yaml.safe_load_all(out.stdout) if doc]

    objects = build(K8S)
    assert all(
        o["metadata"].get("namespace") == "learnstream" for o in objects if o["kind"] != "Namespace"
    )
    assert any(o["kind"] == "ConfigMap" for o in objects)
    overlay = K8S_GPU
    trainer = next(o for o in build(overlay) if o["metadata"]["name"] == "learnstream-trainer")
    (container,) = trainer["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dockerfiles() -> None:
    cpu = (ROOT / "Dockerfile").read_text()
    gpu = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", cpu, re.M)
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in cpu
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:", gpu, re.M)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for dockerfile in (cpu, gpu):
        assert 'pip install -c /tmp/constraints.txt ".[all]"' in dockerfile
        assert 'ENTRYPOINT ["learnstream"]' in dockerfile
        users = re.findall(r"^USER (\S+)", dockerfile, re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root")
        copied = set(re.findall(r"^COPY (\S+) \./", dockerfile, re.M))
        for package in packages:
            assert package.rstrip("*") in copied
            assert package.rstrip("*") not in ignored
        assert "README.md" in dockerfile  # pyproject's readme, needed to build
    assert "README.md" not in ignored and "pyproject.toml" not in ignored
    assert ".git" in ignored


# --- observability -------------------------------------------------------------------------


def test_dashboard_and_alert_metrics_are_registered() -> None:
    registered = registered_metric_names()
    exprs = dashboard_exprs() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    for where, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert name in registered or name in EXTERNAL_METRICS, (
                f"{where}: {name} is not registered by learnstream (nor allow-listed)"
            )
    # The dashboard covers the pipeline end to end.
    dashboard_names = {n for _, e in dashboard_exprs() for n in promql_metric_names(e)}
    assert {
        "learnstream_events_consumed_total",
        "learnstream_dlq_total",
        "learnstream_value_score_bucket",
        "learnstream_high_value_total",
        "learnstream_stage_seconds_bucket",
        "redpanda_kafka_consumer_group_lag_sum",
        "learnstream_patterns_extracted_total",
        "learnstream_patterns_merged_total",
        "learnstream_dataset_lines",
        "learnstream_learnings_since_training",
        "learnstream_training_runs_total",
        "learnstream_active_model_eval_loss",
    } <= dashboard_names


def test_dashboard_structure() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    for panel in doc["panels"]:
        assert "gridPos" in panel
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert "datasource" in variables
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "learnstream.yml")[0]
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    volumes = compose()["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in volumes


def test_alerts() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {
        "LearnstreamDLQSpike",
        "LearnstreamConsumerLagGrowing",
        "LearnstreamNoEvents",
        "LearnstreamTrainingFailed",
    } <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert rule["annotations"]["summary"], name
    assert 'status="failed"' in rules["LearnstreamTrainingFailed"]["expr"]
    (prometheus,) = load_yaml(PROMETHEUS)
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]


def require_tool(name: str) -> str:
    """The path of ``name``; skips without it, except under CI=true, where it must be there."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (CI installs it: apt-get install prometheus)")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"


def test_alert_rules_check_and_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in check.stdout
    run = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    (doc,) = load_yaml(ALERT_TESTS)
    assert doc["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names, f"alerts without a firing case: {names - firing}"
    assert quiet == names, f"alerts without a not-firing case: {names - quiet}"


# --- compose: the bundled broker is optional -----------------------------------------------

BUNDLED_BROKER = {"redpanda", "redpanda-config", "console"}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` with the variables in ``env``."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", one, value)


def test_compose_runs_on_an_external_broker_without_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    for name in BUNDLED_BROKER:
        assert services[name]["profiles"] == ["redpanda"], name
    for name, service in services.items():
        if name in BUNDLED_BROKER:
            continue
        assert "profiles" not in service, name
        depends = service.get("depends_on") or {}
        for dependency in depends if isinstance(depends, dict) else {d: {} for d in depends}:
            if dependency in BUNDLED_BROKER:
                assert depends[dependency].get("required") is False, f"{name} -> {dependency}"
    assert "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS" not in read_env_file(ENV_FILE)
    external = "kafka-1:9092,kafka-2:9092"
    for name in LEARNSTREAM_SERVICES:
        raw = services[name]["environment"]["LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
        assert interpolate(raw, {}) == "redpanda:9092", name
        assert interpolate(raw, {"KAFKA_BOOTSTRAP_SERVERS": external}) == external, name
        env = {
            k: interpolate(str(v), {"KAFKA_BOOTSTRAP_SERVERS": external, "GATEWAY_TOKEN": "t"})
            for k, v in services[name]["environment"].items()
        }
        settings = validate_env({**read_env_file(ENV_FILE), **env}, monkeypatch)
        assert settings.kafka.bootstrap_servers == external, name
    # The compose header and the README show both ways.
    header = COMPOSE.read_text()
    for text in (header, readme_section()):
        assert "--profile redpanda up -d" in text
        assert "KAFKA_BOOTSTRAP_SERVERS=" in text


def test_worker_scale_examples_agree() -> None:
    scales = {
        (where, int(n))
        for where, text in all_texts().items()
        for n in re.findall(r"--scale worker=(\d+)", text)
    }
    assert {where for where, _ in scales} >= {"deploy/compose.yaml", "README.md#operating"}
    assert len({n for _, n in scales}) == 1, scales
    (n,) = {n for _, n in scales}
    assert n <= TOPICS["telemetry.ralph"].partitions


# --- Kubernetes: TLS, ingress, KEDA auth, GPU overlay, paths ---------------------------------

TLS_DIR = "/etc/learnstream/tls"


def test_every_kafka_client_mounts_the_tls_secret() -> None:
    workloads = {
        o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] in ("Deployment", "Job")
    }
    assert set(workloads) == {
        "learnstream-topics-init",
        "learnstream-gateway",
        "learnstream-worker",
        "learnstream-sink",
        "learnstream-trainer",
    }
    for name, obj in workloads.items():
        spec = obj["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert volumes["kafka-tls"]["secret"] == {
            "secretName": "learnstream-kafka-tls",
            "optional": True,
        }, name
        (container,) = spec["containers"]
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        assert mounts["kafka-tls"]["mountPath"] == TLS_DIR and mounts["kafka-tls"]["readOnly"]
    # The commented TLS settings point into that folder.
    for path in re.findall(r"SSL_\w+_LOCATION[:=]\s*(\S+)", (K8S / "secret.yaml").read_text()):
        assert path.startswith(TLS_DIR + "/"), path


def test_gateway_ingress_has_tls_and_routes_to_the_gateway() -> None:
    (ingress,) = load_yaml(K8S / "gateway-ingress.yaml")
    assert ingress["kind"] == "Ingress"
    assert ingress["metadata"]["namespace"] == "learnstream"
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"]
    hosts = set(tls["hosts"])
    service = by_kind("Service")["learnstream-gateway"]
    port = service["spec"]["ports"][0]["port"]
    paths = []
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in hosts, "every host is served over TLS"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert (backend["name"], backend["port"]["number"]) == ("learnstream-gateway", port)
            paths.append(path["path"])
    assert "/v1/" in paths and "/metrics" not in paths
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    assert "gateway-ingress.yaml" not in kustomization["resources"], "needs a controller: optional"


def test_keda_trigger_authentication_for_sasl() -> None:
    secret, auth = load_yaml(K8S / "keda-trigger-auth.yaml")
    assert auth["kind"] == "TriggerAuthentication" and auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert {"sasl", "username", "password", "tls", "ca"} <= set(refs)
    assert secret["kind"] == "Secret"
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert secret["stringData"]["sasl"] in ("plaintext", "scram_sha256", "scram_sha512")
    text = (K8S / "keda-scaledobject.yaml").read_text()
    assert re.search(r"#\s*authenticationRef:\s*\n\s*#\s*name: " + auth["metadata"]["name"], text)


def test_every_deploy_path_mentioned_exists() -> None:
    user_files = {"deploy/.env"}  # the user's own (tokens), never shipped
    seen = set()
    for where, text in all_texts().items():
        for path in re.findall(r"(?<![\w/.-])(deploy/[\w./-]*[\w])", text):
            seen.add(path)
            if path not in user_files:
                assert (ROOT / path).exists(), f"{where}: {path} does not exist"
        for path in re.findall(r"overlays/\w+", text):
            assert (K8S / path).exists(), f"{where}: {path} does not exist"
    assert "deploy/k8s-gpu" in seen


def test_air_gapped_model_weights_are_documented() -> None:
    text = (K8S / "README.md").read_text()
    section = text[text.index("## Model weights on an air-gapped cluster") :]
    assert "HF_HUB_OFFLINE=1" in section
    (path,) = set(re.findall(r"LEARNSTREAM_BASE_MODEL=(/data/\S+?)`", section))
    trainer = by_kind("Deployment")["learnstream-trainer"]["spec"]["template"]["spec"]
    (container,) = trainer["containers"]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(path.startswith(m + "/") for m in mounts), "the weights live on a mounted volume"


# --- README examples -----------------------------------------------------------------------


def test_readme_bearer_tokens_are_defined() -> None:
    text = (ROOT / "README.md").read_text()
    blocks, block, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            if fenced:
                blocks.append("\n".join(block))
            fenced, block = not fenced, []
        elif fenced:
            block.append(line)
    uses = 0
    for block in blocks:
        for name in re.findall(r"Bearer \$\{?(\w+)", block):
            uses += 1
            defined = re.search(rf"(?:export |^){name}=", block, re.M)
            assert defined, f"README: `Bearer ${name}` but {name} is never set in that block"
            if "learnstream gateway" in block:
                assert name == "LEARNSTREAM_GATEWAY__TOKEN", "the gateway reads that variable"
    assert uses
