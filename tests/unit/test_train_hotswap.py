"""Hot-swap notifications against a real HTTP server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from learnstream.core.settings import TrainingSettings, load_settings
from schemas.training import TrainingTrigger, TriggerReason
from tests.tinymodel import RecordingServer
from trainers.adapters import AdapterStore, JobRecord
from trainers.hotswap import Notice, notify_all, notify_vllm, notify_webhook, served_path
from trainers.metrics import TrainingMetrics
from trainers.pipeline import run_training_job


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    srv = RecordingServer()
    yield srv
    srv.close()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


NOTICE = Notice(
    base_model="org/base",
    version=3,
    path="/registry/org--base/v0003",
    lora_name="learnstream",
    metrics={"eval_loss_candidate": 1.25},
)


def _ts(**kw: Any) -> TrainingSettings:
    kw.setdefault("hotswap_retries", 3)
    kw.setdefault("hotswap_backoff_s", 0.1)
    kw.setdefault("hotswap_timeout_s", 5)
    return TrainingSettings(**kw)


def test_vllm_unload_then_load(server: RecordingServer) -> None:
    server.script["/v1/unload_lora_adapter"] = [404]  # not loaded yet: fine
    outcome = notify_vllm(server.url, NOTICE, _ts(), Sleeps())
    assert outcome.ok, outcome.error
    assert server.calls == [
        ("/v1/unload_lora_adapter", {"lora_name": "learnstream"}),
        (
            "/v1/load_lora_adapter",
            {"lora_name": "learnstream", "lora_path": "/registry/org--base/v0003"},
        ),
    ]


def test_retries_with_backoff_then_succeeds(server: RecordingServer) -> None:
    server.script["/v1/load_lora_adapter"] = [503, 500]
    sleeps = Sleeps()
    outcome = notify_vllm(server.url, NOTICE, _ts(), sleeps)
    assert outcome.ok
    assert outcome.attempts == 4  # 1 unload + 3 load attempts
    assert sleeps == [0.1, 0.2]
    assert server.paths().count("/v1/load_lora_adapter") == 3


def test_permanent_failure_is_reported(server: RecordingServer) -> None:
    server.default = 500
    sleeps = Sleeps()
    outcome = notify_webhook(server.url + "/hook", NOTICE, _ts(hotswap_retries=2), sleeps)
    assert not outcome.ok
    assert outcome.attempts == 3
    assert outcome.error is not None
    assert "HTTP 500" in outcome.error
    assert "scripted failure" in outcome.error
    assert sleeps == [0.1, 0.2]


def test_client_errors_are_not_retried(server: RecordingServer) -> None:
    server.script["/v1/load_lora_adapter"] = [400]
    outcome = notify_vllm(server.url, NOTICE, _ts(), Sleeps())
    assert not outcome.ok
    assert server.paths().count("/v1/load_lora_adapter") == 1


def test_webhook_payload_and_unreachable_server(server: RecordingServer) -> None:
    closed = RecordingServer()
    closed.close()
    outcomes = notify_all(
        _ts(vllm_servers=[closed.url], webhooks=[server.url + "/hook"], hotswap_retries=1),
        NOTICE,
        Sleeps(),
    )
    assert [(o.kind, o.ok) for o in outcomes] == [("vllm", False), ("webhook", True)]
    assert outcomes[0].attempts == 2
    assert server.calls == [
        (
            "/hook",
            {
                "event": "adapter_activated",
                "base_model": "org/base",
                "version": 3,
                "path": "/registry/org--base/v0003",
                "lora_name": "learnstream",
                "metrics": {"eval_loss_candidate": 1.25},
            },
        )
    ]


def test_base_model_active_only_unloads(server: RecordingServer) -> None:
    notice = Notice(base_model="org/base", version=None, path=None, lora_name="learnstream")
    assert notify_vllm(server.url, notice, _ts(), Sleeps()).ok
    assert server.paths() == ["/v1/unload_lora_adapter"]


def test_served_path_mapping(tmp_path: Path) -> None:
    version_dir = tmp_path / "reg" / "org--base" / "v0003"
    assert served_path(_ts(), tmp_path / "reg", version_dir) == str(version_dir)
    mapped = _ts(served_registry_dir=Path("/mnt/adapters"))
    assert served_path(mapped, tmp_path / "reg", version_dir) == "/mnt/adapters/org--base/v0003"


def _promotable(tmp_path: Path, **training: Any) -> tuple[Any, AdapterStore]:
    """Settings and a registry holding a registered, better candidate of a crashed job."""
    settings = load_settings(
        data_dir=tmp_path / "data", training=_ts(min_eval_examples=10, **training)
    )
    registry = AdapterStore.for_settings(settings, "org/base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    registry.register(
        adapter,
        metrics={"eval_loss_active": 2.0, "eval_loss_candidate": 1.5},
        lineage={"eval_examples": 20, "train_examples": 80, "dataset_hash": "h"},
        config={},
    )
    registry.write_job(
        JobRecord(trigger_id="t", state="registered", candidate_version=1, compared_with=None)
    )
    return settings, registry


def test_promotion_notifies_the_inference_server(tmp_path: Path, server: RecordingServer) -> None:
    settings, registry = _promotable(tmp_path, vllm_servers=[server.url])
    trigger = TrainingTrigger(trigger_id="t", base_model="org/base", reasons=[TriggerReason.MANUAL])
    metrics = TrainingMetrics.on(CollectorRegistry())
    result = run_training_job(settings, trigger, registry, metrics=metrics)
    assert result.status == "promoted", result.reason
    assert "1 server(s) notified" in result.reason
    assert server.calls[-1] == (
        "/v1/load_lora_adapter",
        {"lora_name": "learnstream", "lora_path": str(registry.version_dir(1))},
    )


def test_failed_hotswap_keeps_the_promotion(tmp_path: Path, server: RecordingServer) -> None:
    server.default = 503
    settings, registry = _promotable(
        tmp_path,
        vllm_servers=[server.url],
        webhooks=[server.url + "/hook"],
        hotswap_retries=1,
        hotswap_backoff_s=0.01,
    )
    metrics = CollectorRegistry()
    trigger = TrainingTrigger(trigger_id="t", base_model="org/base", reasons=[TriggerReason.MANUAL])
    result = run_training_job(settings, trigger, registry, metrics=TrainingMetrics.on(metrics))
    assert result.status == "promoted"
    assert registry.active_version() == 1
    assert "2 of 2 server(s) failed" in result.reason
    assert "HTTP 503" in result.reason
    assert result.metrics["hotswap_failures"] == 2.0
    for kind in ("vllm", "webhook"):
        labels = {"kind": kind, "outcome": "failed"}
        assert metrics.get_sample_value("learnstream_hotswap_notifications_total", labels) == 1.0


def test_cli_activate_and_rollback_notify(
    tmp_path: Path, server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from trainers.commands import adapters

    monkeypatch.setenv("LEARNSTREAM_BASE_MODEL", "org/base")
    monkeypatch.setenv("LEARNSTREAM_TRAINING__VLLM_SERVERS", json.dumps([server.url]))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    registry = AdapterStore.for_settings(load_settings())
    assert registry.register(adapter, metrics={}, lineage={}, config={}) == 1
    runner = CliRunner()
    out = runner.invoke(adapters, ["activate", "1"])
    assert out.exit_code == 0, out.output
    assert "1 server(s) notified" in out.output
    assert server.calls[-1][1]["lora_path"] == str(registry.version_dir(1))
    out = runner.invoke(adapters, ["rollback"])
    assert out.exit_code == 0, out.output
    assert server.paths()[-1] == "/v1/unload_lora_adapter"

    server.default = 500
    monkeypatch.setenv("LEARNSTREAM_TRAINING__HOTSWAP_RETRIES", "0")
    out = runner.invoke(adapters, ["activate", "1"])
    assert out.exit_code == 1
    assert "registry was updated" in out.output
    assert registry.active_version() == 1
