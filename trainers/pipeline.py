"""One training job, from trigger to result: what the trainer consumer calls.

snapshot -> split -> (skip if too few examples) -> LoRA SFT -> evaluate active and candidate
on the same eval set and on the golden set -> paired bootstrap of the improvement -> register
the candidate -> activate it or reject it (`trainers.promote`), with the reason -> notify
inference servers -> `TrainingResult`.

The golden set (``LEARNSTREAM_TRAINING__GOLDEN_PATH``, default the shipped
``evals/golden.jsonl``) is fixed and curated by the user, not drawn from the dataset; train
examples asking one of its questions are left out of training, so it stays unseen.

* Never raises: any error becomes ``status="failed"`` with the reason.
* Idempotent per ``trigger_id``: a job record (``jobs/<trigger>.json``) is written when the job
  starts, when the candidate is registered and when it ends; a duplicate trigger of a finished
  job gets the stored result back without training again. A job that crashed after
  registering its candidate resumes at the promotion decision (when the active version is
  still the one it was compared with); one that crashed earlier runs again.
* One job at a time per base model, across processes (a file lock in the adapter store).

Blocking and long (minutes to hours on a real model): call it from a worker thread and keep
polling the consumer, or pause its partitions, so the group does not evict it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from learnstream.core.settings import TrainingSettings
from schemas.base import utcnow
from schemas.training import TrainingResult, TrainingTrigger
from trainers.adapters import AdapterStore, AdapterStoreError, JobRecord, version_name
from trainers.metrics import TrainingMetrics
from trainers.promote import (
    GoldenResult,
    Interval,
    PromotionDecision,
    decide,
    paired_bootstrap,
)

if TYPE_CHECKING:
    from pathlib import Path

    from learnstream.core.settings import Settings
    from trainers.data import Messages

log = logging.getLogger("learnstream.trainers.pipeline")

ProgressFn = Callable[[int, int, float | None], None]
RunStatus = Literal["promoted", "rejected", "failed", "skipped"]


class SkipJob(Exception):  # noqa: N818 - not an error: the job has nothing to do
    """The job has nothing to do (no or too little data)."""


class _Timer:
    def __init__(self) -> None:
        self.durations: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = round(time.perf_counter() - started, 4)

    def finish(self) -> dict[str, float]:
        self.durations["total"] = round(time.perf_counter() - self._started, 4)
        return dict(self.durations)


def run_training_job(
    settings: Settings,
    trigger: TrainingTrigger,
    adapters: AdapterStore | None = None,
    *,
    metrics: TrainingMetrics | None = None,
    on_progress: ProgressFn | None = None,
) -> TrainingResult:
    """Run (or recognize as done) the training job of ``trigger``; never raises.

    ``settings`` is the process `Settings` (``training``, ``dataset_path``, ``adapters_dir``).
    The base model trained is ``trigger.base_model``. ``adapters`` overrides the adapter store
    (default: ``AdapterStore.for_settings(settings, trigger.base_model)``); ``metrics``
    the Prometheus metrics (default registry); ``on_progress(step, max_steps, loss)`` is
    called during training.
    """
    m = metrics or TrainingMetrics.on()
    job = _Job(settings, trigger, m, on_progress)
    try:
        adapters = adapters or AdapterStore.for_settings(settings, trigger.base_model)
        with adapters.job_lock():
            prior = adapters.read_job(trigger.trigger_id)
            if prior is not None and prior.state == "done" and prior.result is not None:
                stored = prior.training_result()
                assert stored is not None
                log.info(
                    "trigger %s already handled (%s): returning the stored result",
                    trigger.trigger_id,
                    stored.status,
                )
                return stored
            result = job.run(adapters, prior)
    except Exception as exc:  # the adapter store itself is unusable (permissions, disk full...)
        log.exception("training job %s failed outside the run", trigger.trigger_id)
        result = job.result("failed", f"{type(exc).__name__}: {exc}")
    _observe(m, trigger.base_model, result)
    log.info("training job %s: %s: %s", trigger.trigger_id, result.status, result.reason)
    return result


def _observe(m: TrainingMetrics, base_model: str, result: TrainingResult) -> None:
    try:
        m.runs.labels(base_model=base_model, status=result.status).inc()
        for stage, seconds in result.durations_s.items():
            m.duration.labels(stage=stage).observe(seconds)
        numbers = result.metrics
        if "relative_improvement" in numbers:
            m.last_improvement.labels(base_model=base_model).set(numbers["relative_improvement"])
        if result.status == "promoted":
            m.active_version.labels(base_model=base_model).set(result.active_version or 0)
            if "eval_loss_candidate" in numbers:
                m.active_eval_loss.labels(base_model=base_model).set(numbers["eval_loss_candidate"])
            if "perplexity_candidate" in numbers:
                m.active_perplexity.labels(base_model=base_model).set(
                    numbers["perplexity_candidate"]
                )
    except Exception:  # metrics must never fail a job
        log.exception("could not record training metrics")


def _label(version: int | None) -> str:
    return "base model" if version is None else version_name(version)


def golden_path(ts: TrainingSettings) -> Path | None:
    """The golden set to use: the configured path (it must exist), else the shipped sample
    if this installation has it; None when the golden set is off or there is none.
    """
    from trainers.evaluate import SHIPPED_GOLDEN

    if not ts.golden_set:
        return None
    if ts.golden_path is not None:
        if not ts.golden_path.exists():
            raise FileNotFoundError(
                f"golden set {ts.golden_path} (LEARNSTREAM_TRAINING__GOLDEN_PATH) does not exist"
            )
        return ts.golden_path
    if SHIPPED_GOLDEN.exists():
        return SHIPPED_GOLDEN
    log.warning(
        "no golden set: %s is not installed and LEARNSTREAM_TRAINING__GOLDEN_PATH is unset",
        SHIPPED_GOLDEN,
    )
    return None


def _interval(metrics: dict[str, float]) -> Interval | None:
    if "improvement_ci_low" not in metrics or "improvement_ci_high" not in metrics:
        return None
    return Interval(
        low=metrics["improvement_ci_low"],
        high=metrics["improvement_ci_high"],
        confidence=metrics.get("improvement_confidence", 0.95),
        resamples=int(metrics.get("improvement_resamples", 0)),
    )


def _golden(metrics: dict[str, float]) -> GoldenResult | None:
    if "golden_loss_active" not in metrics or "golden_loss_candidate" not in metrics:
        return None
    return GoldenResult(
        active_loss=metrics["golden_loss_active"],
        candidate_loss=metrics["golden_loss_candidate"],
        examples=int(metrics.get("golden_examples", 0)),
    )


class _Job:
    """The state of one job while it runs."""

    def __init__(
        self,
        settings: Settings,
        trigger: TrainingTrigger,
        metrics: TrainingMetrics,
        on_progress: ProgressFn | None,
    ) -> None:
        self.settings = settings
        self.ts: TrainingSettings = settings.training
        self.trigger = trigger
        self.metrics = metrics
        self.on_progress = on_progress
        self.started_at = utcnow()
        self.timer = _Timer()

    def result(self, status: RunStatus, reason: str, **fields: Any) -> TrainingResult:
        """A result of this job with its durations so far."""
        return TrainingResult(
            trigger_id=self.trigger.trigger_id,
            base_model=self.trigger.base_model,
            status=status,
            reason=reason,
            durations_s=self.timer.finish(),
            started_at=self.started_at,
            finished_at=utcnow(),
            **fields,
        )

    def run(self, adapters: AdapterStore, prior: JobRecord | None) -> TrainingResult:
        """Run the job under the adapter store's job lock; records its progress; never raises."""
        self.adapters = adapters
        self.record = JobRecord(
            trigger_id=self.trigger.trigger_id,
            state="running",
            attempts=(prior.attempts + 1) if prior else 1,
            started_at=self.started_at.isoformat(),
        )
        if prior is not None and prior.state == "registered":
            self.record.candidate_version = prior.candidate_version
            self.record.compared_with = prior.compared_with
        adapters.write_job(self.record)
        try:
            result = self._stages()
        except SkipJob as skip:
            result = self.result("skipped", str(skip))
        except Exception as exc:
            log.exception("training job %s failed", self.trigger.trigger_id)
            result = self.result("failed", f"{type(exc).__name__}: {exc}")
        self.record.state = "done"
        self.record.result = result.model_dump(mode="json")
        adapters.write_job(self.record)
        shutil.rmtree(adapters.run_dir(self.trigger.trigger_id), ignore_errors=True)
        return result

    def _stages(self) -> TrainingResult:
        adapters, ts, trigger = self.adapters, self.ts, self.trigger
        resumed = self._resume()
        if resumed is not None:
            return resumed

        from trainers.data import prepare_dataset

        dataset = self.settings.dataset_path
        if not dataset.exists():
            raise SkipJob(f"skipped: no dataset at {dataset}")
        run_dir = adapters.run_dir(trigger.trigger_id)
        shutil.rmtree(run_dir, ignore_errors=True)
        with self.timer.stage("snapshot"):
            data = prepare_dataset(dataset, run_dir, eval_fraction=ts.eval_fraction, seed=ts.seed)
        if len(data.train) < ts.min_train_examples or len(data.eval) < ts.min_eval_examples:
            raise SkipJob(
                f"skipped: {len(data.train)} train / {len(data.eval)} eval examples after "
                f"deduplication and the split by query (need >= {ts.min_train_examples} / "
                f">= {ts.min_eval_examples}; dataset {data.lineage.lines} lines, "
                f"{data.lineage.duplicates} duplicates, {data.lineage.invalid_lines} invalid)"
            )

        from trainers import evaluate
        from trainers.data import source_query
        from trainers.train import TrainConfig, main

        golden_file = golden_path(ts)
        golden: list[Messages] = []
        if golden_file is not None:
            golden = evaluate.load_golden(golden_file, self.settings.extract.system_prompt)
        asked = {source_query(messages) for messages in golden}
        train = [e.messages for e in data.train if e.query not in asked]
        if len(train) < len(data.train):
            log.info(
                "left %d train example(s) out: they ask a golden-set question",
                len(data.train) - len(train),
            )
        with self.timer.stage("train"):
            run = main(
                TrainConfig(
                    base_model=trigger.base_model,
                    output_dir=run_dir / "adapter",
                    train=train,
                    settings=ts,
                    on_progress=self.on_progress,
                )
            )
        compared_with = adapters.active_version()
        sets = {"eval": [e.messages for e in data.eval]}
        if golden:
            sets["golden"] = golden
        with self.timer.stage("evaluate"):
            evals = evaluate.evaluate_sets(
                trigger.base_model,
                sets,
                {"active": adapters.active_path(), "candidate": run.adapter_dir},
                ts,
            )
        active, candidate = evals["eval"]["active"], evals["eval"]["candidate"]
        numbers: dict[str, float] = {
            "eval_loss_active": active.loss,
            "eval_loss_candidate": candidate.loss,
            "perplexity_active": active.perplexity,
            "perplexity_candidate": candidate.perplexity,
            "eval_tokens": float(candidate.tokens),
            **run.metrics(),
        }
        if len(train) < len(data.train):
            numbers["golden_overlap_left_out"] = float(len(data.train) - len(train))
        if active.per_example and len(active.per_example) == len(candidate.per_example):
            interval = paired_bootstrap(
                active.example_losses,
                candidate.example_losses,
                resamples=ts.bootstrap_resamples,
                confidence=ts.bootstrap_confidence,
                seed=ts.seed,
            )
            numbers.update(
                improvement_ci_low=interval.low,
                improvement_ci_high=interval.high,
                improvement_confidence=interval.confidence,
                improvement_resamples=float(interval.resamples),
            )
        if "golden" in evals:
            g_active, g_candidate = evals["golden"]["active"], evals["golden"]["candidate"]
            numbers.update(
                golden_loss_active=g_active.loss,
                golden_loss_candidate=g_candidate.loss,
                golden_examples=float(g_candidate.examples),
            )
        config = {
            "trigger_id": trigger.trigger_id,
            "reasons": [str(r) for r in trigger.reasons],
            "compared_with": compared_with,
            "loss_on": run.loss_on,
            "device": run.device,
            "bf16": run.bf16,
            "settings": ts.model_dump(mode="json"),
            "golden_path": str(golden_file) if golden_file is not None else None,
        }
        with self.timer.stage("register"):
            version = adapters.register(
                run.adapter_dir,
                metrics=numbers,
                lineage=data.lineage.to_dict(),
                config=config,
                extra_files={"dataset.jsonl": data.snapshot.path},
            )
            self.record.state = "registered"
            self.record.candidate_version = version
            self.record.compared_with = compared_with
            adapters.write_job(self.record)
        return self._decide(
            version,
            compared_with,
            numbers,
            dataset_hash=data.snapshot.sha256,
            train_examples=len(data.train),
            eval_examples=len(data.eval),
        )

    def _resume(self) -> TrainingResult | None:
        """Finish a crashed attempt's registered candidate, if its decision can still be made."""
        version = self.record.candidate_version
        if version is None:
            return None
        if self.adapters.active_version() != self.record.compared_with:
            log.info("the active version changed since the crashed attempt: training again")
            return None
        try:
            info = self.adapters.show(version)
        except AdapterStoreError:
            return None
        if not {"eval_loss_active", "eval_loss_candidate"} <= info.metrics.keys():
            return None
        log.info(
            "trigger %s: resuming at the decision for registered %s",
            self.trigger.trigger_id,
            version_name(version),
        )
        lineage = info.lineage
        return self._decide(
            version,
            self.record.compared_with,
            {k: float(v) for k, v in info.metrics.items()},
            dataset_hash=lineage.get("dataset_hash"),
            train_examples=int(lineage.get("train_examples", 0)),
            eval_examples=int(lineage.get("eval_examples", 0)),
        )

    def _decide(
        self,
        version: int,
        compared_with: int | None,
        metrics: dict[str, float],
        **counts: Any,
    ) -> TrainingResult:
        ts, trigger, adapters = self.ts, self.trigger, self.adapters
        label = (
            f"the active adapter {version_name(compared_with)}"
            if compared_with is not None
            else "the base model (no active adapter)"
        )
        decision = decide(
            metrics["eval_loss_active"],
            metrics["eval_loss_candidate"],
            counts["eval_examples"],
            min_improvement=ts.min_improvement,
            min_eval_examples=ts.min_eval_examples,
            active_label=label,
            interval=_interval(metrics),
            golden=_golden(metrics),
            max_golden_regression=ts.max_golden_regression,
        )
        numbers = {**metrics, "relative_improvement": decision.relative_improvement}
        if decision.golden is not None:
            numbers["golden_relative_change"] = decision.golden.relative_change
            counts = {**counts, "golden_examples": decision.golden.examples}
        now_active = adapters.active_version()
        if decision.promote and now_active != compared_with:
            # Someone activated another version (CLI) while this one trained: the comparison
            # is stale, so the operator's choice stands.
            decision = PromotionDecision(
                False,
                f"rejected: the active version changed during the job "
                f"({_label(compared_with)} -> {_label(now_active)}); {decision.reason}",
                decision.relative_improvement,
                decision.interval,
                decision.golden,
            )
        adapters.record_decision(
            version,
            {
                "promote": decision.promote,
                "reason": decision.reason,
                "relative_improvement": decision.relative_improvement,
                "improvement_interval": (
                    [decision.interval.low, decision.interval.high]
                    if decision.interval is not None
                    else None
                ),
                "golden": (
                    {
                        "loss_active": decision.golden.active_loss,
                        "loss_candidate": decision.golden.candidate_loss,
                        "examples": decision.golden.examples,
                    }
                    if decision.golden is not None
                    else None
                ),
                "compared_with": compared_with,
                "trigger_id": trigger.trigger_id,
                "at": utcnow().isoformat(),
            },
        )
        if not decision.promote:
            return self.result(
                "rejected",
                decision.reason,
                candidate_version=version,
                active_version=now_active,
                metrics=numbers,
                **counts,
            )

        with self.timer.stage("activate"):
            adapters.activate(version, reason=f"trigger {trigger.trigger_id}: promoted")
        reason = f"{decision.reason}; now active: {version_name(version)}"
        if ts.vllm_servers or ts.webhooks:
            from trainers.hotswap import Notice, notify_all, served_path, summarize

            with self.timer.stage("hotswap"):
                outcomes = notify_all(
                    ts,
                    Notice(
                        base_model=trigger.base_model,
                        version=version,
                        path=served_path(ts, adapters.root, adapters.version_dir(version)),
                        lora_name=ts.lora_name,
                        metrics=numbers,
                    ),
                )
            for outcome in outcomes:
                self.metrics.hotswap.labels(
                    kind=outcome.kind, outcome="ok" if outcome.ok else "failed"
                ).inc()
            numbers["hotswap_failures"] = float(sum(not o.ok for o in outcomes))
            reason = f"{reason}; {summarize(outcomes)}"
        return self.result(
            "promoted",
            reason,
            candidate_version=version,
            active_version=version,
            metrics=numbers,
            **counts,
        )
