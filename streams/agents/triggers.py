"""The `triggers` agents: learnings, outcomes and results in, `training.triggers` out.

The rules live in `trainers.triggers` (pure); this module only moves data:

- `improvement-learned` forwards each `patterns.learned` record, `improvement-outcomes` each
  scored interaction with a known outcome, and `improvement-results` each `training.results`
  record to the internal topic ``<app id>-improvement`` keyed by base model (so one base
  model's state lives on one partition, in order);
- a timer sends a ``tick`` there every ``LEARNSTREAM_TRIGGERS__CHECK_INTERVAL_S`` (time rule);
- ``POST /api/v1/improvement/trigger`` sends a ``manual`` request there;
- `triggers` folds each of them into the base model's `ImprovementState`, kept in the
  changelogged table ``improvement``, and emits a `TrainingTrigger` when a rule fires.

HTTP (the worker's web server): ``GET /api/v1/improvement/status``,
``POST /api/v1/improvement/trigger``, ``GET /api/v1/feedback/statistics``,
``GET /api/v1/patterns/top``, ``GET /api/v1/learnings/recent``; each takes
``?base_model=`` (default: ``LEARNSTREAM_BASE_MODEL``). The state is answered by the worker
that owns the base model's partition; others redirect there or say they do not hold it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from schemas.headers import json_headers
from schemas.interaction import ScoredInteraction
from schemas.pattern import LearnedPattern
from schemas.topics import (
    INTERACTIONS_SCORED,
    PATTERNS_LEARNED,
    TRAINING_RESULTS,
    TRAINING_TRIGGERS,
)
from schemas.training import TrainingResult
from trainers.triggers import (
    ImprovementEvent,
    ImprovementState,
    evaluate,
    from_learned,
    from_result,
    from_scored,
    step,
)

if TYPE_CHECKING:
    import faust

    from learnstream.settings import Settings
    from streams.app import StreamContext

log = logging.getLogger("learnstream.triggers")
M = TypeVar("M", bound=BaseModel)


def refuse_mutation(
    token: SecretStr | None, authorization: str | None, remote: str | None
) -> tuple[int, str] | None:
    """Why a mutating request may not proceed, as (HTTP status, error), or None if it may.

    With a token set, the request needs ``Authorization: Bearer <token>``; without one, it
    must come from loopback, so that no other host can start a training run.
    """
    if token is not None:
        want = f"Bearer {token.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), want):
            return 401, "a valid 'Authorization: Bearer <LEARNSTREAM_WORKER__TOKEN>' is needed"
        return None
    try:
        loopback = remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return 403, "only loopback clients may POST here unless LEARNSTREAM_WORKER__TOKEN is set"
    return None


def _now() -> datetime:
    return datetime.now(UTC)


def register(app: faust.App, ctx: StreamContext) -> Any:
    """Attach the trigger agents, timer and HTTP API to ``app``."""
    import faust

    settings = ctx.settings
    cfg = settings.triggers
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    internal = app.topic(
        f"{settings.worker.app_id}-improvement",
        key_type=bytes,
        value_type=bytes,
        partitions=1,
        internal=True,
        **raw,
    )
    table = app.Table(
        "improvement",
        partitions=1,
        schema=faust.Schema(key_type=str, value_type=str, **raw),
    )
    triggers_topic = app.topic(TRAINING_TRIGGERS.name, **raw)

    async def forward(event: ImprovementEvent) -> None:
        await internal.send(key=event.base_model.encode(), value=event.model_dump_json().encode())

    register_forwarders(app, settings, forward)

    def observe(state: ImprovementState) -> None:
        ctx.metrics.learnings_since_training.labels(state.base_model).set(
            state.learnings_since_training
        )
        if state.success_rate is not None:
            ctx.metrics.window_success_rate.labels(state.base_model).set(state.success_rate)

    @app.agent(internal, name="triggers")
    async def triggers(stream: Any) -> None:
        async for value in stream:
            try:
                event = ImprovementEvent.model_validate_json(value)
            except ValidationError as exc:
                log.warning("skipping an invalid improvement event: %s", exc.errors()[0])
                continue
            state = load(table, event.base_model)
            trigger, why = step(state, event, cfg, _now())
            table[event.base_model] = state.model_dump_json()
            observe(state)
            if trigger is None:
                if event.kind == "manual":
                    log.info("%s: %s", event.base_model, why)
                continue
            for reason in trigger.reasons:
                ctx.metrics.training_triggers.labels(trigger.base_model, reason.value).inc()
            log.info(
                "training trigger %s for %s: %s",
                trigger.trigger_id,
                trigger.base_model,
                trigger.detail,
            )
            await triggers_topic.send(
                key=trigger.base_model.encode(),
                value=trigger.model_dump_json().encode(),
                headers=json_headers("triggers", "training_trigger", trigger.schema_version),
            )

    @app.timer(interval=cfg.check_interval_s)
    async def tick() -> None:
        await forward(ImprovementEvent(kind="tick", base_model=settings.base_model, at=_now()))

    register_api(app, ctx, table, forward)
    return triggers


def register_forwarders(
    app: faust.App, settings: Settings, forward: Callable[[ImprovementEvent], Awaitable[None]]
) -> None:
    """Agents that turn learnings, outcomes and results into improvement events."""
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}

    def raw_topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, **raw)

    def forwarder(
        topic: str, name: str, model: type[M], to_event: Callable[[M], ImprovementEvent | None]
    ) -> None:
        @app.agent(raw_topic(topic), name=name)
        async def agent(stream: Any) -> None:
            async for value in stream:
                try:
                    record = model.model_validate_json(value)
                except ValidationError as exc:  # nothing to count: log and skip
                    log.warning("skipping an invalid %s record: %s", topic, exc.errors()[0])
                    continue
                event = to_event(record)
                if event is not None:
                    await forward(event)

    base_model = settings.base_model
    forwarder(
        PATTERNS_LEARNED.name,
        "improvement-learned",
        LearnedPattern,
        lambda r: from_learned(r, base_model),
    )
    forwarder(
        INTERACTIONS_SCORED.name,
        "improvement-outcomes",
        ScoredInteraction,
        lambda r: from_scored(r, base_model),
    )
    forwarder(
        TRAINING_RESULTS.name,
        "improvement-results",
        TrainingResult,
        lambda r: from_result(r, _now()),
    )


def load(table: Any, base_model: str) -> ImprovementState:
    """A base model's state from the table (a fresh one if none)."""
    stored = table.get(base_model)
    if stored is None:
        return ImprovementState(base_model=base_model)
    return ImprovementState.model_validate_json(stored)


def register_api(
    app: faust.App,
    ctx: StreamContext,
    table: Any,
    forward: Callable[[ImprovementEvent], Awaitable[None]],
) -> None:
    """The improvement HTTP API on the worker's web server."""
    settings = ctx.settings
    cfg = settings.triggers

    def base_model_of(request: Any) -> str:
        return str(request.query.get("base_model") or settings.base_model)

    def limit_of(request: Any, default: int) -> int:
        try:
            return max(1, min(1000, int(request.query.get("limit", default))))
        except ValueError:
            return default

    def holds(base_model: str) -> bool:
        return table.get(base_model) is not None

    def not_here(web: Any, base_model: str) -> Any:
        return web.json(
            {
                "base_model": base_model,
                "error": "no improvement state for this base model on this worker (another "
                "worker of the group may own its partition, or nothing was learned yet)",
            },
            status=404,
        )

    @app.page("/api/v1/improvement/status")
    async def status(web: Any, request: Any) -> Any:
        base_model = base_model_of(request)
        if not holds(base_model):
            return not_here(web, base_model)
        state = load(table, base_model)
        decision = evaluate(state, _now(), cfg)
        body = json.loads(state.model_dump_json(exclude={"seen_event_ids", "recent_learnings"}))
        body.update(
            should_trigger=decision.fire,
            reason=decision.detail,
            reasons=[r.value for r in decision.reasons],
            success_rate=state.success_rate,
            window_size=len(state.outcomes),
        )
        body.pop("outcomes", None)
        return web.json(body)

    from faust.web import View

    @app.page("/api/v1/improvement/trigger")
    class ManualTrigger(View):
        """POST a manual training request: ``{"base_model": ..., "reason": ...}`` (optional)."""

        async def get(self, request: Any) -> Any:
            return self.json({"error": "use POST"}, status=405)

        async def post(self, request: Any) -> Any:
            refused = refuse_mutation(
                settings.worker.token, request.headers.get("Authorization"), request.remote
            )
            if refused is not None:
                return self.json({"error": refused[1]}, status=refused[0])
            try:
                body = await request.json() if request.can_read_body else {}
            except ValueError:
                return self.json({"error": "the body must be JSON"}, status=400)
            if not isinstance(body, dict):
                return self.json({"error": "the body must be a JSON object"}, status=400)
            base_model = str(body.get("base_model") or base_model_of(request))
            request_id = f"manual-{uuid.uuid4()}"
            await forward(
                ImprovementEvent(
                    kind="manual",
                    base_model=base_model,
                    at=_now(),
                    requested_by=str(body.get("requested_by") or request_id),
                    detail=str(body.get("reason") or "manual trigger"),
                )
            )
            return self.json(
                {"accepted": True, "base_model": base_model, "request_id": request_id},
                status=202,
            )

    @app.page("/api/v1/feedback/statistics")
    async def feedback(web: Any, request: Any) -> Any:
        base_model = base_model_of(request)
        if not holds(base_model):
            return not_here(web, base_model)
        state = load(table, base_model)
        window = state.window
        return web.json(
            {
                "base_model": base_model,
                "scored_total": state.scored_total,
                "successes_total": state.successes_total,
                "success_rate_total": (
                    state.successes_total / state.scored_total if state.scored_total else None
                ),
                "window_size": len(window),
                "window_successes": sum(window),
                "window_success_rate": state.success_rate,
                "threshold": cfg.success_rate_threshold,
                "min_samples": cfg.success_min_samples,
            }
        )

    @app.page("/api/v1/learnings/recent")
    async def recent(web: Any, request: Any) -> Any:
        base_model = base_model_of(request)
        if not holds(base_model):
            return not_here(web, base_model)
        state = load(table, base_model)
        items = state.recent_learnings[: limit_of(request, 20)]
        return web.json(
            {
                "base_model": base_model,
                "learnings_total": state.learnings_total,
                "learnings_since_training": state.learnings_since_training,
                "recent": [json.loads(r.model_dump_json()) for r in items],
            }
        )

    @app.page("/api/v1/patterns/top")
    async def top(web: Any, request: Any) -> Any:
        stage = ctx.extraction
        if stage is None:
            return web.json({"error": "this worker does not run the extract agent"}, status=404)
        limit = limit_of(request, 10)

        def best() -> list[Any]:
            with stage.vector_lock:
                return stage.store.top(limit=limit)

        found = await asyncio.get_running_loop().run_in_executor(None, best)
        from extractors.commands import store_identity  # which store answered (the CLI checks)

        patterns = [json.loads(p.model_dump_json()) for p in found]
        return web.json({"store": store_identity(settings), "patterns": patterns})
