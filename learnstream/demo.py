"""The main job on embedded defaults: what `learnstream demo` runs.

Every run has its own state folder, ``<data dir>/demo/<run id>/`` (PostgreSQL, Qdrant, the
dataset, the adapter registry, the tiny model, the logs), and ``<data dir>/demo/latest`` points
at the newest one; the last `KEEP_RUNS` runs are kept. So a second run starts from nothing, as
the first did, and two runs at once (on one data dir or on two) share nothing: each has its own
in-memory dev broker (or, with ``--kafka``, its own local Kafka), ports and folders. Event ids
are derived from the run id, so runs one after the other on one configured broker do not
deduplicate each other either; two at once on the same configured broker would mix their
topics, so a second one from the same data dir is refused in one line (`claim_broker`).

The demo fails fast with the reason (`DemoError`): a child that exits, scoring or extraction
that stops making progress (`STALL_S`), nothing learned, no trigger, no training result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from learnstream.core.settings import Settings

if TYPE_CHECKING:
    import subprocess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KEEP_RUNS = 3
"""Finished demo runs kept under ``<data dir>/demo`` (older ones are removed at the start)."""
STALL_S = 90.0
"""Seconds without progress (scored, candidates, learned, refused) before the demo gives up."""
TRIGGER_WAIT_S = 30.0
"""Seconds from the manual trigger's POST to its record on ``training.triggers``."""
TINY_CONTEXT = 512
"""Positions of the tiny stand-in model (`trainers.tiny`)."""
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
_RUN_NAMESPACE = uuid.UUID("6b1f7c1e-2f4e-4d55-9a49-3f0f3d7b8c21")


class DemoError(RuntimeError):
    """The demo cannot finish; the message says why in one line."""


@dataclass
class DemoSummary:
    """What the demo published and read back."""

    sent: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    on_topics: Counter[str] = field(default_factory=Counter)
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: int = 0
    run_dir: Path | None = None
    result: dict[str, Any] | None = None


# --- the run's folder -----------------------------------------------------------------------


@dataclass
class DemoRun:
    """One run's state folder, locked (``.lock``) for as long as the run lives."""

    run_id: str
    dir: Path
    lock: IO[str]

    @property
    def base(self) -> Path:
        """``<data dir>/demo``."""
        return self.dir.parent

    def close(self) -> None:
        """Release the lock (the folder stays)."""
        self.lock.close()


def _try_lock(fh: IO[str]) -> bool:
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _running(run_dir: Path) -> bool:
    """Whether a demo holds ``run_dir``'s lock now."""
    lock = run_dir / ".lock"
    if not lock.exists():
        return False
    with lock.open("a") as fh:
        if _try_lock(fh):
            return False
    return True


def start_run(data_dir: Path, echo: Callable[[str], None]) -> DemoRun:
    """Create and lock a new run folder under ``<data dir>/demo``; prune old finished runs."""
    base = data_dir / "demo"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
    run_dir = base / run_id
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise DemoError(
            f"cannot create {run_dir} ({exc.strerror}); set LEARNSTREAM_DATA_DIR or --data-dir "
            "to a writable folder"
        ) from None
    lock = (run_dir / ".lock").open("a")
    _try_lock(lock)
    _prune(base, keep=KEEP_RUNS, current=run_dir, echo=echo)
    return DemoRun(run_id=run_id, dir=run_dir, lock=lock)


def _prune(base: Path, *, keep: int, current: Path, echo: Callable[[str], None]) -> None:
    runs = sorted(
        p
        for p in base.iterdir()
        if _RUN_ID.match(p.name) and p.is_dir() and not p.is_symlink() and p != current
    )
    finished = [p for p in runs if not _running(p)]
    old = finished[: max(0, len(finished) - (keep - 1))]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    if old:
        echo(f"removed {len(old)} older demo run(s) from {base} (the last {keep} are kept)")


def point_latest(run: DemoRun) -> Path:
    """Make ``<data dir>/demo/latest`` point at this run (atomically); returns the link."""
    link = run.base / "latest"
    tmp = run.base / f".latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        tmp.symlink_to(run.run_id)
        os.replace(tmp, link)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return link


def claim_broker(run: DemoRun, bootstrap_servers: str) -> None:
    """Refuse a second run at once on the same configured broker from this data dir.

    Two such runs would read each other's topics. The claim is this run's ``broker.txt``.
    """
    for other in run.base.iterdir():
        if other == run.dir or other.is_symlink() or not other.is_dir():
            continue
        try:
            claimed = (other / "broker.txt").read_text().strip()
        except OSError:
            continue
        if claimed == bootstrap_servers and _running(other):
            raise DemoError(
                f"another demo ({other}) runs on the configured broker {bootstrap_servers}; "
                "two at once would mix their topics: wait for it, or run without "
                "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS (each run gets its own dev broker)"
            )
    (run.dir / "broker.txt").write_text(bootstrap_servers + "\n")


def run_settings(settings: Settings, run_dir: Path) -> Settings:
    """The settings with every local state path under ``run_dir`` (servers stay as set)."""
    return settings.model_copy(
        update={
            "data_dir": run_dir,
            "postgres": settings.postgres.model_copy(update={"dir": None}),
            "qdrant": settings.qdrant.model_copy(update={"path": None}),
            "extract": settings.extract.model_copy(update={"dataset_path": None}),
            "producer": settings.producer.model_copy(update={"spool_dir": None}),
            "training": settings.training.model_copy(update={"registry_dir": None}),
        }
    )


# Local state paths a user may have set; the children use the run folder's instead.
_STATE_ENV = (
    "LEARNSTREAM_POSTGRES__DIR",
    "LEARNSTREAM_QDRANT__PATH",
    "LEARNSTREAM_EXTRACT__DATASET_PATH",
    "LEARNSTREAM_PRODUCER__SPOOL_DIR",
    "LEARNSTREAM_TRAINING__REGISTRY_DIR",
)


@contextmanager
def dev_broker_if_needed(
    settings: Settings, echo: Callable[[str], None], *, kafka: bool = False
) -> Iterator[Settings]:
    """Yield settings pointing at a broker: the configured one, else an in-process dev broker,
    or with ``kafka`` a real local Kafka (`learnstream.localkafka`) whose data stays in the
    data directory."""
    if settings.kafka.bootstrap_servers:
        echo(f"broker: {settings.kafka.bootstrap_servers} (configured)")
        yield settings
        return
    if kafka:
        from learnstream.localkafka import LocalKafka

        echo("broker: starting a local Apache Kafka (first run: Maven fetches its jars) ...")
        with LocalKafka(settings.data_dir, record_file=settings.broker_file).start() as local:
            echo(f"broker: local Kafka on {local.bootstrap_servers} (data in {local.root})")
            yield settings.model_copy(
                update={
                    "kafka": settings.kafka.model_copy(
                        update={"bootstrap_servers": local.bootstrap_servers}
                    )
                }
            )
        return
    from learnstream.devbroker import DevBroker, remove_record, write_record

    broker = DevBroker()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            broker.poll(0.2)

    poller = threading.Thread(target=serve, daemon=True)
    poller.start()
    write_record(settings.broker_file, broker.bootstrap_servers, 1)
    echo(f"broker: dev broker on {broker.bootstrap_servers} (in memory, stops with the demo)")
    try:
        yield settings.model_copy(
            update={
                "kafka": settings.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap_servers}
                )
            }
        )
    finally:
        stop.set()
        poller.join()
        remove_record(settings.broker_file)
        broker.close()


# --- the settings the demo changes ----------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """A setting the demo changes for its short run, and the default it replaces."""

    env: str
    value: str
    default: str
    why: str
    tiny_only: bool = False


DEMO_OVERRIDES = (
    Override("LEARNSTREAM_TRAINING__MAX_STEPS", "40", "3 epochs", "a short run"),
    Override(
        "LEARNSTREAM_TRAINING__LEARNING_RATE", "0.005", "0.0002", "the tiny model learns fast"
    ),
    Override("LEARNSTREAM_TRAINING__LORA_RANK", "8", "16", "a small adapter"),
    Override(
        "LEARNSTREAM_TRAINING__EVAL_FRACTION",
        "0.35",
        "0.2",
        "an eval split of >= 10 examples (LEARNSTREAM_TRAINING__MIN_EVAL_EXAMPLES) from the sample",
    ),
    Override(
        "LEARNSTREAM_TRAINING__MAX_LENGTH",
        str(TINY_CONTEXT),
        "1024",
        "the tiny model's context",
        tiny_only=True,
    ),
)
"""Applied to the children unless the variable is set; the automatic triggers are left as they
are (the demo fires one manual trigger once every learning is in)."""


def applied_overrides(env: dict[str, str], *, tiny: bool) -> list[Override]:
    """The overrides that apply: those whose variable ``env`` does not set."""
    return [o for o in DEMO_OVERRIDES if o.env not in env and (tiny or not o.tiny_only)]


def _child_env(
    settings: Settings, base_model: str, web_port: int, overrides: list[Override]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STATE_ENV}
    env.update(
        {
            "LEARNSTREAM_DATA_DIR": str(settings.data_dir),
            "LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS": str(settings.kafka.bootstrap_servers),
            "LEARNSTREAM_BASE_MODEL": base_model,
            "LEARNSTREAM_WORKER__WEB_PORT": str(web_port),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update({o.env: o.value for o in overrides})
    return env


# --- the children ---------------------------------------------------------------------------


class Children:
    """The pipeline's processes (worker, sink, trainer), each logging to a file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, Any] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> None:
        """Start ``learnstream <args>`` as ``name``."""
        import subprocess
        import sys

        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "learnstream", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = (proc, log)

    def check(self) -> None:
        """Fail in one line if a child died: its exit code, its log's last line, the log."""
        for name, (proc, _) in self.procs.items():
            if _reap(proc) is not None:
                path = self.logs / f"{name}.log"
                lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
                last = lines[-1].strip()[:300] if lines else "(empty)"
                raise DemoError(
                    f"`learnstream {name}` exited with {proc.returncode}; its log ends: {last} "
                    f"(whole log: {path})"
                )

    def stop(self) -> None:
        """SIGTERM every child, then wait (kill after 60 s); it raises nothing of its own, so
        the exception that stops the demo (`Terminated`) is the one that leaves it."""
        import signal

        for proc, _ in self.procs.values():
            if _reap(proc) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc, log in self.procs.values():
            if not _wait(proc, 60):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                _wait(proc, 10)
            log.close()


def _reap(proc: subprocess.Popen[bytes]) -> int | None:
    """The child's exit code once it exited, else None; never blocks (like ``Popen.poll``).

    Not ``Popen.poll``: SIGTERM raises `Terminated` wherever the main thread is, and raised
    right after poll took the Popen's ``_waitpid_lock`` (before its ``try``) it leaves that lock
    taken; every later ``poll`` then says "running" and ``wait(60)`` times out, so the stop
    raised ``TimeoutExpired``: exit 1 instead of 143. ``os.waitpid`` takes no lock.
    """
    if proc.returncode is None:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already, its status lost
            proc.returncode = -1
        else:
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the child exited within ``timeout`` seconds (`_reap`, not ``Popen.wait``)."""
    deadline = time.monotonic() + timeout
    while _reap(proc) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# --- following the pipeline -----------------------------------------------------------------


@dataclass
class PipelineTally:
    """What the demo read back from the pipeline's topics (this run's records only)."""

    scored: dict[str, Any] = field(default_factory=dict)
    candidates: set[str] = field(default_factory=set)
    learned: dict[tuple[str, str], str] = field(default_factory=dict)
    refused: int = 0
    dead_letters: set[tuple[int, int]] = field(default_factory=set)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def progress(self) -> tuple[int, int, int, int]:
        """What grows while scoring and extraction make progress."""
        return len(self.scored), len(self.candidates), len(self.learned), self.refused


class _Follower:
    """Reads the run's records from the pipeline's topics into a `PipelineTally`."""

    def __init__(self, settings: Settings, ids: set[str], base_model: str, since_ms: int) -> None:
        from confluent_kafka import Consumer

        from learnstream.core.kafka import consumer_config
        from schemas.topics import (
            DLQ,
            INTERACTIONS_SCORED,
            PATTERNS_CANDIDATES,
            PATTERNS_LEARNED,
            TRAINING_RESULTS,
            TRAINING_TRIGGERS,
        )

        self.ids, self.base_model = ids, base_model
        self.tally = PipelineTally()
        self.since_ms = since_ms  # dead letters from before this run are not its own
        self.names = {
            t.name: key
            for t, key in (
                (INTERACTIONS_SCORED, "scored"),
                (PATTERNS_CANDIDATES, "candidate"),
                (PATTERNS_LEARNED, "learned"),
                (DLQ, "dlq"),
                (TRAINING_TRIGGERS, "trigger"),
                (TRAINING_RESULTS, "result"),
            )
        }
        self.consumer = Consumer(
            consumer_config(
                settings,
                f"learnstream-demo-{uuid.uuid4().hex[:8]}",
                # topics appear as the loop runs; notice them quickly
                **{"topic.metadata.refresh.interval.ms": 1000},
            )
        )
        self.consumer.subscribe(list(self.names))

    def poll(self, timeout: float) -> None:
        """Read what arrived within ``timeout`` seconds."""
        msg = self.consumer.poll(timeout)
        if msg is None or msg.error():
            return
        kind = self.names.get(msg.topic() or "")
        try:
            doc = json.loads(msg.value() or b"{}")
        except ValueError:
            doc = {}
        t, ids = self.tally, self.ids
        if kind == "scored" and doc.get("interaction", {}).get("event_id") in ids:
            t.scored[doc["interaction"]["event_id"]] = doc
        elif kind == "candidate" and doc.get("interaction", {}).get("event_id") in ids:
            t.candidates.add(doc["interaction"]["event_id"])
        elif kind == "learned" and doc.get("event_id") in ids:  # a re-read counts once
            t.learned[(doc["event_id"], doc["pattern"]["pattern_id"])] = doc["status"]
        elif kind == "dlq" and (msg.timestamp()[1] or 0) >= self.since_ms:
            t.dead_letters.add((msg.partition() or 0, msg.offset() or 0))
        elif kind == "trigger" and doc.get("base_model") == self.base_model:
            t.triggers[doc["trigger_id"]] = doc
        elif kind == "result" and doc.get("base_model") == self.base_model:
            t.results[doc["trigger_id"]] = doc

    def close(self) -> None:
        """Leave the consumer group."""
        self.consumer.close()


def _refused(settings: Settings) -> int:
    """Candidates the substance gate refused so far (the run's refusals log)."""
    from extractors.refusals import refusal_stats
    from extractors.stage import refusals_path

    try:
        return int(refusal_stats(refusals_path(settings)).to_dict().get("refused", 0))
    except (OSError, ValueError):
        return 0


def _follow(
    settings: Settings,
    ids: set[str],
    children: Children,
    *,
    base_model: str,
    echo: Callable[[str], None],
    timeout: float,
    web: str,
    since_ms: int,
) -> PipelineTally:
    """Follow the run until its training result; fire the manual trigger once learning settled.

    Fails (`DemoError`) within `STALL_S` when scoring or extraction stop making progress,
    when nothing was learned, when the trigger does not appear, or after ``timeout``.
    """
    follower = _Follower(settings, ids, base_model, since_ms)
    tally = follower.tally
    start = time.monotonic()
    deadline = start + timeout
    reported = changed = start
    last = tally.progress()
    fired_at: float | None = None
    refused_checked = 0.0
    try:
        while not tally.results:
            children.check()
            now = time.monotonic()
            if now > deadline:
                raise DemoError(
                    f"no training result within {timeout:.0f} s (scored {len(tally.scored)}/"
                    f"{len(ids)}, learned {len(tally.learned)}, triggers {len(tally.triggers)}); "
                    f"see {children.logs}/trainer.log"
                )
            if now - refused_checked > 1:
                tally.refused, refused_checked = _refused(settings), now
            if tally.progress() != last:
                last, changed = tally.progress(), now
            if fired_at is None:
                fired_at = _maybe_fire(
                    settings,
                    tally,
                    ids,
                    quiet_s=now - changed,
                    web=web,
                    children=children,
                    echo=echo,
                )
            elif not tally.triggers and now - fired_at > TRIGGER_WAIT_S:
                raise DemoError(
                    f"the worker accepted the manual trigger but no record reached "
                    f"training.triggers within {TRIGGER_WAIT_S:.0f} s; see "
                    f"{children.logs}/worker.log"
                )
            if now - reported > 15:
                reported = now
                stage = "training" if tally.triggers else "scoring and extracting"
                echo(
                    f"  ... {stage}: scored {len(tally.scored)}/{len(ids)}, candidates "
                    f"{len(tally.candidates)}, learned {len(tally.learned)}, refused "
                    f"{tally.refused}, triggers {len(tally.triggers)}"
                )
            follower.poll(0.5)
    finally:
        follower.close()
    return tally


def _maybe_fire(
    settings: Settings,
    tally: PipelineTally,
    ids: set[str],
    *,
    quiet_s: float,
    web: str,
    children: Children,
    echo: Callable[[str], None],
) -> float | None:
    """Fire the manual trigger once every event is scored and every candidate is learned or
    refused (or nothing moved for a while after scoring); None while not yet. Raises when the
    pipeline stalled or learned nothing."""
    scored = len(tally.scored) >= len(ids)
    settled = len(tally.learned) + tally.refused >= len(tally.candidates)
    if not scored:
        if quiet_s > STALL_S:
            raise DemoError(
                f"the worker scored {len(tally.scored)} of {len(ids)} events and nothing more in "
                f"{STALL_S:.0f} s; see {children.logs}/worker.log"
            )
        return None
    if not (settled and quiet_s >= 2) and quiet_s < 20:  # 2 s of quiet: the last writes landed
        return None
    if not tally.learned:
        why = (
            f"all {tally.refused} candidates were refused by the substance gate"
            if tally.candidates and tally.refused >= len(tally.candidates)
            else f"{len(tally.candidates)} candidates, {tally.refused} refused"
        )
        raise DemoError(
            f"nothing was learned ({why}); see {children.logs}/worker.log and "
            "`learnstream dataset stats`"
        )
    import click

    from learnstream.api_client import post_json

    body = {"base_model": settings.base_model, "reason": "demo: every sample event is in"}
    try:
        post_json(settings, "/api/v1/improvement/trigger", body, web)
    except click.ClickException as exc:
        raise DemoError(f"the manual training trigger failed: {exc.message}") from None
    echo(
        f"  every event is in ({len(tally.learned)} learned, {tally.refused} refused): "
        "the demo fired a manual training trigger"
    )
    return time.monotonic()


def _wait_http(url: str, children: Children, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        children.check()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the worker did not answer on {url} within {timeout:.0f} s; see "
                    f"{children.logs}/worker.log"
                ) from None
            time.sleep(0.5)


def _postgres_summary(settings: Settings, ids: set[str]) -> list[tuple[Any, ...]]:
    from learnstream.postgres import connect, postgres_url

    with connect(postgres_url(settings)) as conn:
        return conn.execute(
            "SELECT source, count(*), count(score), round(avg(score)::numeric, 3), "
            "count(*) FILTER (WHERE high_value) FROM telemetry_events "
            "WHERE event_id::text = ANY(%s) GROUP BY source ORDER BY source",
            (sorted(ids),),
        ).fetchall()


def _histogram(scores: list[float]) -> str:
    bins = [0] * 5
    for value in scores:
        bins[min(4, int(value * 5))] += 1
    return "  ".join(f"{i / 5:.1f}-{(i + 1) / 5:.1f}: {n}" for i, n in enumerate(bins))


# --- the run --------------------------------------------------------------------------------


def _base_model(settings: Settings, run_dir: Path, examples: Path) -> tuple[str, bool]:
    """The base model and whether it is the tiny stand-in built for this run."""
    if "base_model" in settings.model_fields_set:
        return settings.base_model, False
    from transformers.utils import logging as hf_logging

    from trainers.tiny import build_tiny_model

    hf_logging.disable_progress_bar()  # "Writing model shards" is noise here
    # Its tokenizer learns the sample's words, so an example takes few of its 512 positions.
    corpus = [p.read_text(errors="replace") for p in sorted(examples.glob("*-events.jsonl"))]
    path = build_tiny_model(run_dir / "models" / "tiny", corpus=corpus, vocab_size=4096)
    return str(path), True


def run_demo(
    settings: Settings,
    *,
    examples: Path | None = None,
    schemas_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    timeout: float = 600.0,
    kafka: bool = False,
) -> DemoSummary:
    """The whole loop on embedded defaults, in a new run folder; prints a summary.

    dev broker (in this process) -> sample telemetry through the producer SDK -> `learnstream
    worker` (score, extract, triggers), `sink` (embedded PostgreSQL) and `trainer` as child
    processes -> once every event is in, one manual training trigger -> one training run of a
    tiny stand-in model (unless LEARNSTREAM_BASE_MODEL is set) -> summary. Raises `DemoError`
    with one line when it cannot finish.
    """
    import logging

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("learnstream.postgres").setLevel(logging.WARNING)
    examples = examples or EXAMPLES
    run = start_run(settings.data_dir, echo)
    try:
        return _run(
            run,
            settings,
            examples,
            schemas_dir=schemas_dir,
            echo=echo,
            timeout=timeout,
            kafka=kafka,
        )
    finally:
        run.close()


def _run(
    run: DemoRun,
    settings: Settings,
    examples: Path,
    *,
    schemas_dir: Path | None,
    echo: Callable[[str], None],
    timeout: float,
    kafka: bool,
) -> DemoSummary:
    from learnstream.schema_export import export_schemas

    state = run_settings(settings, run.dir)
    if state.kafka.bootstrap_servers:
        try:
            claim_broker(run, state.kafka.bootstrap_servers)
        except DemoError:
            shutil.rmtree(run.dir, ignore_errors=True)  # refused before it began
            raise
    echo(f"run {run.run_id}: its state goes to {run.dir}")
    point_latest(run)
    out = schemas_dir or run.dir / "schemas"
    written = export_schemas(out)
    echo(f"schemas: {len(written)} JSON Schemas in {out}")
    base_model, tiny = _base_model(settings, run.dir, examples)
    if tiny:
        echo(f"base model: a tiny causal LM built locally in {base_model}")
        echo("  (it stands in for the real one: set LEARNSTREAM_BASE_MODEL to a name or path)")
    else:
        echo(f"base model: {base_model} (LEARNSTREAM_BASE_MODEL)")
    state = state.model_copy(update={"base_model": base_model})
    overrides = applied_overrides(dict(os.environ), tiny=tiny)
    summary = DemoSummary(run_dir=run.dir)
    with dev_broker_if_needed(state, echo, kafka=kafka) as live:
        tally, rows = _pipeline(
            live,
            examples,
            summary,
            run,
            base_model=base_model,
            overrides=overrides,
            echo=echo,
            timeout=timeout,
        )
    for doc in tally.scored.values():
        src = doc["interaction"]["source"]
        summary.on_topics[src] += 1
        summary.by_type[(src, doc["interaction"]["event_type"])] += 1
    summary.dead_letters = len(tally.dead_letters)
    summary.result = next(iter(tally.results.values()))
    _print_summary(
        state,
        summary=summary,
        tally=tally,
        rows=rows,
        base_model=base_model,
        overrides=overrides,
        tiny=tiny,
        kafka=kafka,
        echo=echo,
    )
    status = summary.result["status"]
    if status in ("skipped", "failed"):
        raise DemoError(f"the training run {status}: {summary.result['reason']}")
    return summary


def _pipeline(
    live: Settings,
    examples: Path,
    summary: DemoSummary,
    run: DemoRun,
    *,
    base_model: str,
    overrides: list[Override],
    echo: Callable[[str], None],
    timeout: float,
) -> tuple[PipelineTally, list[tuple[Any, ...]]]:
    """Start the children, publish, follow the run to its result; the PostgreSQL rows."""
    from learnstream.core.net import free_port

    port = free_port()
    web = f"http://127.0.0.1:{port}"
    children = Children(_child_env(live, base_model, port, overrides), run.dir / "logs")
    try:
        children.start("worker", "worker", "--loglevel", "warning")
        children.start("sink", "sink")
        children.start("trainer", "trainer")
        echo(f"started worker ({web}), sink, trainer; logs: {children.logs}")
        _wait_http(f"{web}/healthz", children, timeout=180)
        since_ms = int(time.time() * 1000) - 1000
        files = _publish(live, examples, summary, run.run_id, echo)
        ids = _collect_ids(examples, files, run.run_id)
        echo(f"published {sum(summary.sent.values())} events; waiting for the pipeline")
        tally = _follow(
            live,
            ids,
            children,
            base_model=base_model,
            echo=echo,
            timeout=timeout,
            web=web,
            since_ms=since_ms,
        )
        rows = _postgres_summary(live, ids)
        deadline = time.monotonic() + 60
        while sum(r[1] for r in rows) < len(ids) and time.monotonic() < deadline:
            children.check()
            time.sleep(1)  # the sink writes in batches
            rows = _postgres_summary(live, ids)
    finally:
        children.stop()
    return tally, rows


def _demo_line(line: bytes, run_id: str, source: str, offset: int) -> bytes:
    """The line with an event id derived from the run (kept when the line has one)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return line
    if not isinstance(doc, dict) or doc.get("event_id"):
        return line
    doc["event_id"] = str(uuid.uuid5(_RUN_NAMESPACE, f"{run_id}:{source}:{offset}"))
    return json.dumps(doc, ensure_ascii=False).encode() + b"\n"


def _publish(
    settings: Settings,
    examples: Path,
    summary: DemoSummary,
    run_id: str,
    echo: Callable[[str], None],
) -> set[str]:
    """Send every example file through the producer SDK; returns the files sent."""
    from schemas import Source
    from streams.producers.sdk import TelemetryProducer
    from streams.producers.sender import read_lines, send_lines

    files: set[str] = set()
    with TelemetryProducer(settings=settings, name="demo", stage="send") as producer:
        for source in Source:
            path = examples / f"{source.value}-events.jsonl"
            if not path.exists():
                echo(f"{source.value}: no {path}")
                continue
            files.add(str(path))
            with open(path, "rb") as f:
                lines = (
                    (number, offset, _demo_line(line, run_id, source.value, offset))
                    for number, offset, line in read_lines(f)
                )
                report = send_lines(
                    producer,
                    source,
                    lines,
                    origin=str(path),
                    deterministic_ids=True,
                    max_bytes=settings.max_event_bytes,
                )
            summary.sent[source.value] = report.sent
            summary.invalid[source.value] = report.invalid
        producer.flush(60)
    return files


def _collect_ids(examples: Path, files: set[str], run_id: str) -> set[str]:
    """The ids `_publish` gave the example files' valid lines."""
    from schemas import EventError, parse_event
    from streams.producers.sender import read_lines

    ids: set[str] = set()
    for name in files:
        path = Path(name)
        source = path.name.split("-", 1)[0]
        with open(path, "rb") as f:
            for _, offset, line in read_lines(f):
                if not line.strip():
                    continue
                try:
                    event = parse_event(source, _demo_line(line, run_id, source, offset))
                except EventError:
                    continue
                if event.event_id:
                    ids.add(event.event_id)
    return ids


# --- the summary ----------------------------------------------------------------------------


def _print_summary(
    settings: Settings,
    *,
    summary: DemoSummary,
    tally: PipelineTally,
    rows: list[tuple[Any, ...]],
    base_model: str,
    overrides: list[Override],
    tiny: bool,
    kafka: bool,
    echo: Callable[[str], None],
) -> None:
    from extractors.dataset import stats
    from extractors.stage import dataset_path
    from schemas import Source

    echo("")
    echo(f"{'source':8} {'sent':>5} {'scored':>6} {'invalid→dlq':>11}  event types")
    for source in Source:
        s = source.value
        types = ", ".join(f"{t} {n}" for (src, t), n in sorted(summary.by_type.items()) if src == s)
        echo(
            f"{s:8} {summary.sent[s]:>5} {summary.on_topics[s]:>6} {summary.invalid[s]:>11}  "
            f"{types}"
        )
    echo("  (scored: read back from interactions.scored, every event whether it got a score)")
    scores = [d["score"] for d in tally.scored.values() if d.get("score") is not None]
    echo("")
    echo(
        f"value scores ({len(scores)} scored, {len(tally.scored) - len(scores)} lifecycle): "
        "events that close an interaction (a completion, a task's end, a route decision) get "
        "a value score; lifecycle events (started, checkpoint, ...) are stored unscored"
    )
    echo(f"  {_histogram(scores)}")
    echo(
        f"  high value (>= {settings.score.threshold}): {len(tally.candidates)} candidates "
        "for the pattern extractor"
    )
    echo("PostgreSQL telemetry_events (source, rows, scored, mean score, high value):")
    for row in rows:
        echo(f"  {row[0]:8} {row[1]:>5} {row[2]:>6} {row[3]!s:>6} {row[4]:>5}")
    path = dataset_path(settings)
    data = stats(path).to_dict()
    learned = Counter(tally.learned.values())
    echo(
        f"patterns learned: {learned['new']} new, {learned['merged']} merged; "
        f"dataset {path}: {data.get('examples', data.get('lines'))} examples"
    )
    _print_gate(data.get("refusals") or {}, len(tally.candidates), echo)
    _print_lengths(path, base_model, tiny, echo)
    echo(
        "settings the demo changed for a short run (each LEARNSTREAM_..., and only where the "
        f"environment does not set it):{' none' if not overrides else ''}"
    )
    for o in overrides:
        echo(f"  {o.env.removeprefix('LEARNSTREAM_')}={o.value} (default {o.default}): {o.why}")
    for t in tally.triggers.values():
        echo(f"training trigger {t['trigger_id'][:8]}: {', '.join(t['reasons'])} ({t['detail']})")
    echo(
        f"  (the demo fires it once every event is in; automatic triggers wait for "
        f"{settings.triggers.learnings_threshold} learnings, LEARNSTREAM_TRIGGERS__"
        "LEARNINGS_THRESHOLD)"
    )
    for r in tally.results.values():
        _print_result(r, echo)
    echo(f"dead letters: {summary.dead_letters}")
    _print_state(settings, base_model, kafka, echo)


def _print_lengths(path: Path, base_model: str, tiny: bool, echo: Callable[[str], None]) -> None:
    """How the dataset's examples fit the model's context (counted with its tokenizer)."""
    if not tiny or not path.exists():
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    lengths = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            text = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False)
            lengths.append(len(tokenizer(str(text))["input_ids"]))
    if lengths:
        over = sum(1 for n in lengths if n > TINY_CONTEXT)
        echo(
            f"  example lengths: {min(lengths)}-{max(lengths)} tokens, {over} of {len(lengths)} "
            f"over the model's {TINY_CONTEXT} (those are truncated to it)"
        )


def _print_result(r: dict[str, Any], echo: Callable[[str], None]) -> None:
    """The result's decision and the numbers behind it."""
    echo(f"training result: {r['status'].upper()}: {r['reason']}")
    m = r.get("metrics") or {}
    if "eval_loss_active" in m and "eval_loss_candidate" in m:
        rel = m.get("relative_improvement")
        interval = ""
        if "improvement_ci_low" in m:
            conf = m.get("improvement_confidence", 0.95)
            interval = (
                f"; {conf:.0%} interval [{m['improvement_ci_low']:+.2%}, "
                f"{m['improvement_ci_high']:+.2%}], its low end must clear the margin"
            )
        echo(
            f"  eval split ({r.get('eval_examples', '?')} examples, never trained on; "
            f"{r.get('train_examples', '?')} trained): loss active {m['eval_loss_active']:.4f} "
            f"-> candidate {m['eval_loss_candidate']:.4f}"
            + (f" ({rel:+.2%})" if isinstance(rel, int | float) else "")
            + interval
        )
    if "golden_loss_active" in m and "golden_loss_candidate" in m:
        worse = m["golden_loss_candidate"] > m["golden_loss_active"]
        echo(
            f"  golden set ({int(m.get('golden_examples', 0))} examples, evals/golden.jsonl): "
            f"loss active {m['golden_loss_active']:.4f} -> candidate "
            f"{m['golden_loss_candidate']:.4f} ({'worse: rejected' if worse else 'not worse'})"
        )


def _print_state(
    settings: Settings, base_model: str, kafka: bool, echo: Callable[[str], None]
) -> None:
    """Where the run's state lives and commands that read it after the demo ended."""
    run = settings.data_dir
    at = f"learnstream --data-dir {run}"
    echo("")
    echo(
        f"This run's state: {run} ({run.parent / 'latest'} points at the newest run; the last "
        f"{KEEP_RUNS} runs are kept)"
    )
    for path, what in (
        (settings.postgres_dir, "the embedded PostgreSQL (table telemetry_events)"),
        (settings.qdrant_path, "patterns and interaction history (Qdrant, local mode)"),
        (settings.dataset_path.parent, "the fine-tuning dataset and the gate's refusals"),
        (settings.adapters_dir, "the adapter store"),
        (run / "logs", "the worker's, sink's and trainer's logs"),
    ):
        shown = path.relative_to(run) if path.is_relative_to(run) else path
        echo(f"  {str(shown) + '/':10} {what}")
    echo("Look at it now (each command starts what it needs and stops it again):")
    echo(f'  {at} db -c "select source, event_type, score from telemetry_events limit 5"')
    echo(f"  {at} db                      (psql on the embedded PostgreSQL)")
    echo(f"  {at} adapters list           (every base model's versions and decisions)")
    echo(f"  {at} dataset stats           (examples, balance, gate refusals)")
    echo(f"  {at} patterns top            (the skill library, in local Qdrant)")
    configured = settings.kafka.bootstrap_servers
    if configured:
        echo(f"  The topics stay on the configured broker {configured}.")
    elif kafka:
        echo(f"  {at} kafka                   (the run's Kafka again; then `topics describe`)")
    else:
        echo("  The dev broker and its topics ended with the demo; `learnstream demo --kafka`")
        echo("  keeps them in a local Kafka in the run folder (`learnstream ... kafka` serves it).")
    worker = f"`LEARNSTREAM_BASE_MODEL={base_model} {at} worker`"
    if configured:
        echo(f"  /metrics, `status` and `trigger` need a running worker: {worker}.")
    else:
        echo("  /metrics, `status` and `trigger` need a running worker and a broker; in two")
        echo(f"  shells: `{at} {'kafka' if kafka else 'broker'}` and {worker}.")


def _print_gate(refusals: dict[str, Any], candidates: int, echo: Callable[[str], None]) -> None:
    """The substance gate's and the dataset balance's part, from the refusals log."""

    def by(counts: dict[str, int]) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in counts.items())

    refused = int(refusals.get("refused", 0))
    why = f" ({by(refusals.get('refused_by_reason') or {})})" if refused else ""
    echo(
        f"substance gate: {refused} of {candidates} candidates refused{why}, "
        f"{max(0, candidates - refused)} passed"
    )
    skipped = int(refusals.get("skipped", 0))
    if skipped:
        echo(f"  dataset balance: {skipped} examples skipped ({by(refusals['skipped_by_reason'])})")
    if refused or skipped:
        echo(f"  reasons and excerpts for review: {refusals.get('path')}")
