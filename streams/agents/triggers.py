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
that owns the base model's partition; the others answer ``307 Temporary Redirect`` to the same
path on the owner (its Faust canonical URL, ``http://<web bind or host name>:<web port>``), or
404 where no worker owns it yet.

What the agents do per record is in pure functions: `improvement_output` (what a forwarder
sends), `fold` (what `triggers` stores and sends), `trigger_outputs`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
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
from schemas.training import TrainingResult, TrainingTrigger
from streams.agents.outputs import Output, Outputs
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

    from learnstream.core.settings import Settings, TriggerSettings
    from streams.context import StreamContext

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


def improvement_output(event: ImprovementEvent, topic: str) -> Output:
    """The record a forwarder (or the timer, or a manual request) sends for ``event`` to the
    internal topic ``topic``, keyed by base model."""
    return Output(topic, event.base_model.encode(), event.model_dump_json().encode())


def trigger_outputs(trigger: TrainingTrigger | None) -> list[Output]:
    """The `training.triggers` record of ``trigger`` (none without one), keyed by base model."""
    if trigger is None:
        return []
    return [
        Output(
            TRAINING_TRIGGERS.name,
            trigger.base_model.encode(),
            trigger.model_dump_json().encode(),
            json_headers("triggers", "training_trigger", trigger.schema_version),
        )
    ]


@dataclass(frozen=True)
class Folded:
    """What `fold` made of one improvement event."""

    state: ImprovementState
    stored: str  # the state as the table stores it
    trigger: TrainingTrigger | None
    why: str
    outputs: list[Output]


def fold(
    stored: str | None, event: ImprovementEvent, cfg: TriggerSettings, now: datetime
) -> Folded:
    """Fold ``event`` into the base model's stored state (None: a fresh one) at time ``now``:
    the state to store and what to send (a training trigger when a rule fires)."""
    state = (
        ImprovementState(base_model=event.base_model)
        if stored is None
        else ImprovementState.model_validate_json(stored)
    )
    trigger, why = step(state, event, cfg, now)
    return Folded(state, state.model_dump_json(), trigger, why, trigger_outputs(trigger))


def redirect_location(owner: Any, here: Any, path_qs: str) -> str | None:
    """Where to redirect a request for ``path_qs`` whose state lives at ``owner`` (the
    owning worker's base URL, None if unknown); None when that is this worker (``here``)."""
    if owner is None:
        return None
    from yarl import URL

    owner_url, here_url = URL(str(owner)), URL(str(here))
    if (owner_url.host, owner_url.port) == (here_url.host, here_url.port):
        return None
    return f"{owner_url.origin()}/{path_qs.lstrip('/')}"


def register(
    app: faust.App, ctx: StreamContext, *, outputs: Mapping[str, Any] | None = None
) -> Any:
    """Attach the trigger agents, timer and HTTP API to ``app``; ``outputs`` replaces output
    topics by name (an in-process test passes ``app.channel()``s)."""
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
    internal_name = internal.get_topic_name()
    sends = Outputs(app, (TRAINING_TRIGGERS.name,), outputs)
    forwards = Outputs(app, (internal_name,), {internal_name: internal, **(outputs or {})})

    async def forward(event: ImprovementEvent) -> None:
        await forwards.send(improvement_output(event, internal_name))

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
            folded = fold(table.get(event.base_model), event, cfg, _now())
            table[event.base_model] = folded.stored
            observe(folded.state)
            trigger = folded.trigger
            if trigger is None:
                if event.kind == "manual":
                    log.info("%s: %s", event.base_model, folded.why)
                continue
            for reason in trigger.reasons:
                ctx.metrics.training_triggers.labels(trigger.base_model, reason.value).inc()
            log.info(
                "training trigger %s for %s: %s",
                trigger.trigger_id,
                trigger.base_model,
                trigger.detail,
            )
            await sends.send_all(folded.outputs)

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


def owner_of(app: Any, table: Any, base_model: str) -> Any:
    """The base URL of the worker whose partition of ``table`` holds ``base_model``, or None
    where the group has not assigned it (yet)."""
    try:
        return app.router.key_store(table.name, base_model)
    except Exception:  # no assignment yet, or the producer has no metadata of the topic
        pass
    # The table has one partition: its owner is the one worker assigned partition 0.
    try:
        hosts = app.router.table_metadata(table.name)
    except Exception:
        return None
    changelog = table.changelog_topic.get_topic_name()
    owners = [url for url, tps in hosts.items() if 0 in tps.get(changelog, ())]
    return owners[0] if len(owners) == 1 else None


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

    def elsewhere(web: Any, request: Any, base_model: str) -> Any:
        """A redirect to the owning worker when that is another one, else None."""
        location = redirect_location(
            owner_of(app, table, base_model), app.conf.canonical_url, str(request.url.raw_path_qs)
        )
        if location is None:
            return None
        return web.json(
            {"base_model": base_model, "owner": location},
            status=307,
            headers={"Location": location},
        )

    def not_here(web: Any, base_model: str) -> Any:
        return web.json(
            {
                "base_model": base_model,
                "error": "no improvement state for this base model yet (no worker of the "
                "group owns its partition yet, or nothing was learned yet)",
            },
            status=404,
        )

    @app.page("/api/v1/improvement/status")
    async def status(web: Any, request: Any) -> Any:
        base_model = base_model_of(request)
        if (moved := elsewhere(web, request, base_model)) is not None:
            return moved
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
        if (moved := elsewhere(web, request, base_model)) is not None:
            return moved
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
        if (moved := elsewhere(web, request, base_model)) is not None:
            return moved
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
