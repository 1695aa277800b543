"""A real Apache Kafka on loopback: KRaft nodes (each broker and controller) behind one launcher.

Unlike the dev broker (librdkafka's in-memory mock, ``learnstream.devbroker``) this is Kafka
itself, so everything Kafka does works: CreateTopics/DeleteTopics/DescribeConfigs, replication,
transactions, and data that survives a restart. The jars come from Maven once (the pom ships in
``learnstream/localkafka_files/``) into a cache, ``~/.cache/learnstream/kafka/<version>/lib``
(``$LEARNSTREAM_KAFKA_CACHE/<version>/lib``); later starts need no network and no Maven.
``KAFKA_HOME`` (an unpacked Kafka distribution) is run instead when given.

Layout under ``<data dir>/kafka``: ``cluster.json`` (cluster id, ports, directory ids: a
restart reuses them, so topics and committed offsets survive), ``node-N/`` (each node's
``log.dirs``), ``config/node-N.properties`` (rewritten on every start), ``logs/node-N.log``
(Kafka's log, WARN and above) and ``logs/node-N.out`` (the JVM's own output).

A Java 17+ runtime is needed. The Java processes die with the launcher (Linux: a parent-death
signal), so a killed launcher leaves no orphans; on Linux that signal follows the *thread* that
started a node, so start nodes from a thread that outlives them (the main thread, say).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from learnstream.core.net import free_ports

KAFKA_VERSION = "4.4.0"
HOST = "127.0.0.1"
DEFAULT_PARTITIONS = 4
DEFAULT_HEAP = "512m"
MIN_JAVA = 17
MAX_NODES = 5
LAYOUT_FILE = "cluster.json"
CACHE_ENV = "LEARNSTREAM_KAFKA_CACHE"
_FILES = "localkafka_files"
_FRESH_HINT = "remove {root} to start afresh (this deletes its topics), or use another --data-dir"
_CHECK_HINT = (
    "check the --set values; if {root} is damaged, remove it to start afresh (this deletes its "
    "topics) or use another --data-dir"
)
_JAVA_MAIN_PREFIX = 'Exception in thread "main" '


class LocalKafkaError(RuntimeError):
    """Kafka cannot be started or run as asked; the message says what to do."""


class StartAbortedError(LocalKafkaError):
    """``start()`` was interrupted through its ``abort`` event; nothing is left running."""


# --- pure parts: ids, ports, layout, configuration ----------------------------------------------


def kafka_uuid() -> str:
    """A random id in Kafka's form (URL-safe base64 of 16 bytes), as ``random-uuid`` prints."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's own generator avoids these (they read as options)
            return text


def port_free(port: int) -> bool:
    """Whether a server could listen on ``127.0.0.1:port`` now (TIME_WAIT leftovers are fine)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class NodeSpec:
    """One KRaft node: its id, client port, controller port and metadata directory id."""

    id: int
    port: int
    controller_port: int
    directory_id: str

    @property
    def address(self) -> str:
        """The node's client address, ``127.0.0.1:port``."""
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class ClusterLayout:
    """What a cluster keeps across restarts (``<data dir>/kafka/cluster.json``)."""

    cluster_id: str
    nodes: tuple[NodeSpec, ...]
    kafka_version: str = KAFKA_VERSION

    @classmethod
    def create(cls, nodes: int, port: int = 0) -> ClusterLayout:
        """A new cluster of ``nodes`` nodes, client ports ``port``, ``port+1``, … (0: free ones)."""
        if not 1 <= nodes <= MAX_NODES:
            raise LocalKafkaError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
        ports = free_ports(2 * nodes)
        client = _client_ports(nodes, port) if port else ports[:nodes]
        controllers = [p for p in ports[nodes:] + ports[:nodes] if p not in client][:nodes]
        return cls(
            cluster_id=kafka_uuid(),
            nodes=tuple(
                NodeSpec(i + 1, client[i], controllers[i], kafka_uuid()) for i in range(nodes)
            ),
        )

    def with_port(self, port: int) -> ClusterLayout:
        """The same cluster with client ports ``port``, ``port+1``, … (0: unchanged).

        Controller ports stay: the quorum's voters are recorded with them.
        """
        if not port or port == self.nodes[0].port:
            return self
        ports = _client_ports(len(self.nodes), port)
        taken = {n.controller_port for n in self.nodes} & set(ports)
        if taken:
            raise LocalKafkaError(
                f"--port {port}: port {min(taken)} is this cluster's controller port; "
                "choose another --port"
            )
        return replace(
            self, nodes=tuple(replace(n, port=p) for n, p in zip(self.nodes, ports, strict=True))
        )

    def node(self, node_id: int) -> NodeSpec:
        """The node with id ``node_id`` (1-based)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise ValueError(f"no node {node_id}: node ids are 1..{len(self.nodes)}")

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated."""
        return ",".join(n.address for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        """The layout as stored in ``cluster.json``."""
        return {
            "cluster_id": self.cluster_id,
            "kafka_version": self.kafka_version,
            "nodes": [
                {
                    "id": n.id,
                    "port": n.port,
                    "controller_port": n.controller_port,
                    "directory_id": n.directory_id,
                }
                for n in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> ClusterLayout:
        """Parse ``cluster.json``; ValueError/KeyError/TypeError when it is not one."""
        nodes = tuple(
            NodeSpec(
                int(n["id"]), int(n["port"]), int(n["controller_port"]), str(n["directory_id"])
            )
            for n in data["nodes"]
        )
        if not nodes or [n.id for n in nodes] != list(range(1, len(nodes) + 1)):
            raise ValueError("node ids must be 1..N")
        return cls(str(data["cluster_id"]), nodes, str(data.get("kafka_version", KAFKA_VERSION)))

    def save(self, path: Path) -> None:
        """Write the layout atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)


def _client_ports(nodes: int, port: int) -> list[int]:
    ports = list(range(port, port + nodes))
    if port < 1 or ports[-1] > 65535:
        raise LocalKafkaError(f"--port {port}: {nodes} node(s) need ports {port}..{ports[-1]}")
    return ports


def load_or_create_layout(
    root: Path, nodes: int, port: int = 0, kafka_version: str = KAFKA_VERSION
) -> ClusterLayout:
    """The cluster recorded under ``root`` (client ports moved to ``port`` if given), else a new
    one, saved. Raises LocalKafkaError for an unreadable record or another node count."""
    path = root / LAYOUT_FILE
    hint = _FRESH_HINT.format(root=root)
    if path.exists():
        try:
            layout = ClusterLayout.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LocalKafkaError(f"{path} is unreadable ({exc}); {hint}") from None
        if len(layout.nodes) != nodes:
            raise LocalKafkaError(
                f"{root} holds a {len(layout.nodes)}-node cluster: start it with "
                f"--nodes {len(layout.nodes)}, or {hint}"
            )
        moved = layout.with_port(port)
        if moved is not layout:
            moved.save(path)
        return moved
    if any(root.glob("node-*/meta.properties")):
        raise LocalKafkaError(f"{root} holds Kafka data but no {LAYOUT_FILE}; {hint}")
    layout = replace(ClusterLayout.create(nodes, port), kafka_version=kafka_version)
    layout.save(path)
    return layout


def server_properties(
    layout: ClusterLayout,
    node_id: int,
    root: Path,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """server.properties of node ``node_id``: combined broker+controller on loopback, tuned for
    development and tests (quick group joins and failover, small footprint)."""
    node = layout.node(node_id)
    replicas = min(len(layout.nodes), 3)
    min_isr = 2 if replicas >= 3 else 1
    listeners = f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}"
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.id),
        "controller.quorum.bootstrap.servers": ",".join(
            f"{HOST}:{n.controller_port}" for n in layout.nodes
        ),
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(root / f"node-{node.id}"),
        "num.partitions": str(DEFAULT_PARTITIONS),
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        # A killed node is fenced (and its partitions move) after 3 s instead of 9.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
        # Small machines: few threads, and a 16 MiB compaction buffer instead of 128.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    props.update(overrides or {})
    return props


def render_properties(props: Mapping[str, str]) -> str:
    """``key=value`` lines (values with backslashes escaped, as java.util.Properties reads)."""
    lines = ["# Written by learnstream (learnstream/localkafka.py) on every start; edits are lost."]
    lines += [f"{key}={value.replace(chr(92), chr(92) * 2)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def read_properties(path: Path) -> dict[str, str]:
    """A simple ``key=value`` properties file (meta.properties), comments skipped."""
    props: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def log_tail(path: Path, lines: int = 12, since: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``since``, stack frames left out."""
    try:
        with path.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("\tat ", "\t..."))]
    return "\n".join(kept[-lines:])


# --- the runtime: Java, the jars ----------------------------------------------------------------


@dataclass(frozen=True)
class JavaRuntime:
    """The ``java`` that runs Kafka and its version."""

    path: str
    major: int
    version: str


_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


def find_java(env: Mapping[str, str] | None = None) -> JavaRuntime:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH; LocalKafkaError unless it is Java 17+."""
    env = os.environ if env is None else env
    java_home = env.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and os.access(candidate, os.X_OK):
        path: str | None = str(candidate)
    else:
        path = shutil.which("java", path=env.get("PATH", os.defpath))
    if path is None:
        raise LocalKafkaError(
            f"Java not found: Kafka needs a Java {MIN_JAVA}+ runtime; install one (e.g. "
            f"`apt-get install openjdk-{MIN_JAVA}-jre-headless`) or set JAVA_HOME"
        )
    try:
        out = subprocess.run(
            [path, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"{path} does not run ({exc}); install Java {MIN_JAVA}+") from None
    first = (out.stderr or out.stdout).strip().splitlines()[:1]
    match = _VERSION_RE.search(first[0]) if first else None
    if match is None:
        raise LocalKafkaError(f"{path} -version printed no version; install Java {MIN_JAVA}+")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_..." is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise LocalKafkaError(
            f"Kafka needs Java {MIN_JAVA} or newer, but {path} is Java {major}; install a newer "
            "one and put it first on PATH, or set JAVA_HOME"
        )
    return JavaRuntime(path, major, first[0])


def default_cache_dir() -> Path:
    """``$LEARNSTREAM_KAFKA_CACHE``, else ``$XDG_CACHE_HOME/learnstream/kafka`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "learnstream" / "kafka"


def packaged_file(name: str) -> bytes:
    """A file shipped in ``learnstream/localkafka_files`` (the pom, the log4j2 config)."""
    return (resources.files("learnstream") / _FILES / name).read_bytes()


def _cached_jars(version_dir: Path, pom_digest: str) -> list[Path] | None:
    try:
        lines = (version_dir / "jars.txt").read_text().splitlines()
    except OSError:
        return None
    if not lines or lines[0] != f"pom-sha256 {pom_digest}":
        return None
    jars = [version_dir / "lib" / name for name in lines[1:] if name]
    return jars if jars and all(j.is_file() for j in jars) else None


def jars_cached(cache_dir: Path) -> bool:
    """Whether the cache holds every jar of the packaged pom (no Maven needed to start)."""
    digest = hashlib.sha256(packaged_file("pom.xml")).hexdigest()
    return _cached_jars(cache_dir / KAFKA_VERSION, digest) is not None


def resolve_jars(cache_dir: Path, echo: Callable[[str], None] | None = None) -> list[Path]:
    """Kafka's jars from the cache, resolved with Maven into it first when incomplete."""
    pom = packaged_file("pom.xml")
    digest = hashlib.sha256(pom).hexdigest()
    version_dir = cache_dir / KAFKA_VERSION
    jars = _cached_jars(version_dir, digest)
    if jars is not None:
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            f"Kafka {KAFKA_VERSION} is not in the cache ({version_dir}/lib) and Maven is not on "
            "PATH: install Maven (e.g. `apt-get install maven`) and run once with network "
            "access, or set KAFKA_HOME to an unpacked Kafka"
        )
    if echo:
        echo(f"resolving Apache Kafka {KAFKA_VERSION} with Maven into {version_dir}/lib (once)")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{KAFKA_VERSION}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "pom.xml").write_bytes(pom)
    except OSError as exc:
        raise LocalKafkaError(
            f"cannot write the Kafka cache {cache_dir}: {exc.strerror}; set {CACHE_ENV} "
            "to a writable folder"
        ) from None
    try:
        cmd = [mvn, "-q", "-B", "-f", str(tmp / "pom.xml"), "dependency:copy-dependencies"]
        cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={tmp / 'lib'}"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            raise LocalKafkaError(
                "Maven took over 15 minutes to resolve Kafka; check network access"
            ) from None
        names = sorted(p.name for p in (tmp / "lib").glob("*.jar"))
        if out.returncode != 0 or not names:
            output = (out.stdout + out.stderr).splitlines()
            errors = [ln for ln in output if "[ERROR]" in ln] or output or ["no jars"]
            why = re.sub(r"\x1b\[[0-9;]*m", "", errors[0]).replace("[ERROR]", "").strip()
            raise LocalKafkaError(
                f"Maven could not resolve Kafka {KAFKA_VERSION} ({why[:300]}); check network "
                "access and ~/.m2/settings.xml, or set KAFKA_HOME to an unpacked Kafka"
            )
        (tmp / "jars.txt").write_text("\n".join([f"pom-sha256 {digest}", *names]) + "\n")
        shutil.rmtree(version_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # another launcher finished first: use its copy
            tmp.rename(version_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    jars = _cached_jars(version_dir, digest)
    if jars is None:
        raise LocalKafkaError(f"the Kafka cache {version_dir} is incomplete; remove it and retry")
    return jars


def jars_version(jars: Sequence[Path]) -> str:
    """The Kafka version of a classpath, from its ``kafka_<scala>-<version>.jar``."""
    for jar in jars:
        match = re.fullmatch(r"kafka_[\d.]+-(.+)\.jar", jar.name)
        if match:
            return match.group(1)
    return "unknown"


def kafka_home_jars(kafka_home: Path) -> list[Path]:
    """The jars of an unpacked Kafka distribution (``libs/``)."""
    jars = sorted((kafka_home / "libs").glob("*.jar"))
    if not any(j.name.startswith("kafka_") for j in jars):
        raise LocalKafkaError(
            f"KAFKA_HOME={kafka_home} has no libs/kafka_*.jar: point it at an unpacked Kafka "
            f"distribution, or unset it to run Kafka {KAFKA_VERSION} from the cache"
        )
    return jars


def _deathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn that has the child SIGKILLed when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)

    return preexec


# --- the cluster ----------------------------------------------------------------------------------


@dataclass
class _Node:
    spec: NodeSpec
    proc: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = None
    log_offset: int = 0
    expected_down: bool = True
    archive_tmp: Path | None = None
    started_at: float = field(default=0.0)


class LocalKafka:
    """A local Apache Kafka cluster (KRaft, combined broker+controller nodes) on loopback.

    ``LocalKafka(data_dir).start()`` returns once every node answers metadata requests;
    ``stop()`` shuts the nodes down (SIGTERM, then SIGKILL after ``stop_timeout``); ``with
    LocalKafka(...) as kafka:`` does both. Node ids are 1..``nodes``: ``kill_node(i)`` crashes
    one (SIGKILL), ``stop_node(i)``/``start_node(i)``/``restart_node(i)`` cycle one.

    ``port`` is node 1's client port (node N gets port+N-1); 0 reuses the recorded one, or
    picks free ones for a new cluster. ``overrides`` go on top of the generated
    server.properties, ``jvm_options`` after the default JVM flags (so they win: e.g.
    ``-XX:TieredStopAtLevel=4`` for full JIT). With ``record_file`` the cluster records its
    address there like the dev broker does (``learnstream.devbroker.write_record``), with
    ``"kind": "kafka"`` and the Java ``pids``. ``class_sharing`` keeps a JVM class-data
    archive in the cache, which makes every start after the first ~1.5 s quicker.
    """

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 1,
        port: int = 0,
        *,
        heap: str = DEFAULT_HEAP,
        overrides: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = (),
        kafka_home: Path | None = None,
        cache_dir: Path | None = None,
        record_file: Path | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        class_sharing: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise LocalKafkaError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "kafka"
        self.num_nodes = nodes
        self.port = port
        self.heap = heap
        self.overrides = dict(overrides or {})
        self.jvm_options = list(jvm_options)
        home = kafka_home if kafka_home is not None else os.environ.get("KAFKA_HOME") or None
        self.kafka_home = Path(home) if home else None
        self.cache_dir = cache_dir or default_cache_dir()
        self.record_file = record_file
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.class_sharing = class_sharing
        self._echo = echo
        self.layout: ClusterLayout | None = None
        self._nodes: dict[int, _Node] = {}
        self._lock: IO[str] | None = None
        self._java: JavaRuntime | None = None
        self._classpath: str = ""
        self._archive: Path | None = None
        self.kafka_version = KAFKA_VERSION if self.kafka_home is None else "unknown"

    # -- what callers read --

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address, comma-separated (known once started)."""
        if self.layout is None:
            raise LocalKafkaError("the cluster is not started")
        return self.layout.bootstrap_servers

    @property
    def cluster_id(self) -> str:
        """The KRaft cluster id (kept across restarts)."""
        if self.layout is None:
            raise LocalKafkaError("the cluster is not started")
        return self.layout.cluster_id

    @property
    def pids(self) -> list[int]:
        """Process ids of the running Java nodes."""
        return [n.proc.pid for n in self._nodes.values() if n.proc and n.proc.poll() is None]

    @property
    def running(self) -> bool:
        """Whether any node's process is alive."""
        return bool(self.pids)

    def node_address(self, node_id: int) -> str:
        """The client address of node ``node_id``."""
        return self._node(node_id).spec.address

    def log_file(self, node_id: int) -> Path:
        """Kafka's log (WARN and above) of node ``node_id``."""
        return self.root / "logs" / f"node-{node_id}.log"

    def dead_nodes(self) -> list[int]:
        """Nodes that exited on their own (not through ``stop``/``kill_node``/``stop_node``)."""
        return [
            i
            for i, n in self._nodes.items()
            if not n.expected_down and n.proc is not None and n.proc.poll() is not None
        ]

    def died_message(self, node_id: int) -> str:
        """What to tell about node ``node_id`` having exited: its exit code and last log lines."""
        node = self._node(node_id)
        code = node.proc.poll() if node.proc else None
        log = self.log_file(node_id)
        out = log.with_suffix(".out")
        tail = log_tail(log, since=node.log_offset) or log_tail(out)
        where = f"last lines of {log}:\n{tail}" if tail else f"nothing in {log} or {out}"
        return f"Kafka node {node_id} exited (code {code}); {where}"

    # -- lifecycle --

    def start(self, abort: threading.Event | None = None) -> LocalKafka:
        """Format new nodes, start every node, wait until all answer metadata; returns self.

        Raises LocalKafkaError (nothing left running) when it cannot; StartAbortedError when
        ``abort`` is set meanwhile.
        """
        if self._nodes:
            raise LocalKafkaError("this LocalKafka is already started")
        self._java = find_java()
        jars = (
            kafka_home_jars(self.kafka_home)
            if self.kafka_home
            else resolve_jars(self.cache_dir, self._echo)
        )
        self._classpath = os.pathsep.join(str(j) for j in jars)
        self.kafka_version = jars_version(jars)
        try:
            self._prepare_root()
            self.layout = layout = load_or_create_layout(
                self.root, self.num_nodes, self.port, self.kafka_version
            )
            self._nodes = {n.id: _Node(n) for n in layout.nodes}
            self._check_ports(layout)
            self._archive = self._class_archive(jars)
            self._format(layout, abort)
            for node_id in self._nodes:
                self._spawn(node_id)
            self._wait_ready(list(self._nodes), time.monotonic() + self.start_timeout, abort)
            self._write_record()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM; SIGKILL after ``stop_timeout``), remove the record."""
        atexit.unregister(self.stop)
        if self.record_file is not None:
            from learnstream.devbroker import remove_record

            remove_record(self.record_file)
        for node in self._nodes.values():
            node.expected_down = True
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        self._end_lone_raft_leader(deadline)
        for node in self._nodes.values():
            self._reap(node, deadline)
        self._nodes = {}
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def kill_node(self, node_id: int) -> None:
        """SIGKILL node ``node_id`` (a crash: no clean shutdown) and wait for it to die."""
        node = self._node(node_id)
        node.expected_down = True
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
        self._reap(node, time.monotonic() + self.stop_timeout)
        self._write_record()

    def stop_node(self, node_id: int) -> None:
        """Shut node ``node_id`` down cleanly (SIGTERM; SIGKILL after ``stop_timeout``)."""
        node = self._node(node_id)
        node.expected_down = True
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
        self._reap(node, time.monotonic() + self.stop_timeout)
        self._write_record()

    def start_node(self, node_id: int) -> None:
        """Start node ``node_id`` again (after ``kill_node``/``stop_node``); waits until it is
        back in the cluster's metadata."""
        node = self._node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            raise LocalKafkaError(f"Kafka node {node_id} is running")
        if self.layout is None:
            raise LocalKafkaError("the cluster is not started")
        self._check_ports(self.layout, [node_id])
        self._spawn(node_id)
        self._wait_ready([node_id], time.monotonic() + self.start_timeout, None)
        self._write_record()

    def restart_node(self, node_id: int) -> None:
        """Stop node ``node_id`` cleanly if it runs, start it again and wait until it is back."""
        self.stop_node(node_id)
        self.start_node(node_id)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise ValueError(
                f"no node {node_id}: node ids are 1..{self.num_nodes} (and it must be started)"
            ) from None

    def _prepare_root(self) -> None:
        import fcntl

        try:
            for sub in ("config", "logs"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            lock = (self.root / "launcher.lock").open("a+")
        except OSError as exc:
            raise LocalKafkaError(
                f"cannot write {self.root}: {exc.strerror}; pass a writable --data-dir"
            ) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise LocalKafkaError(
                f"a local Kafka is already running on {self.root} (launcher pid {holder}); "
                "stop it first, or use another --data-dir"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        (self.root / "log4j2.xml").write_bytes(packaged_file("log4j2.xml"))

    def _check_ports(self, layout: ClusterLayout, node_ids: Sequence[int] | None = None) -> None:
        for node in layout.nodes:
            if node_ids is not None and node.id not in node_ids:
                continue
            if not port_free(node.port):
                raise LocalKafkaError(
                    f"port {node.address} (node {node.id}'s client port) is in use; stop what "
                    "listens there, or pass another --port"
                )
            if not port_free(node.controller_port):
                raise LocalKafkaError(
                    f"port {HOST}:{node.controller_port} (node {node.id}'s controller port, kept "
                    f"in {self.root / LAYOUT_FILE}) is in use; stop what listens there, or "
                    f"{_FRESH_HINT.format(root=self.root)}"
                )

    def _class_archive(self, jars: Sequence[Path]) -> Path | None:
        """Where the JVM's class-data archive of this classpath lives (a second faster start)."""
        if not self.class_sharing or self._java is None:
            return None
        key = hashlib.sha256()
        key.update(f"{self._java.path}\n{self._java.version}\n".encode())
        for jar in jars:
            st = jar.stat()
            key.update(f"{jar}\n{st.st_size}\n{st.st_mtime_ns}\n".encode())
        return self.cache_dir / "cds" / f"{key.hexdigest()[:20]}.jsa"

    def _jvm(self, node_id: int, heap: str) -> list[str]:
        assert self._java is not None
        cmd = [
            self._java.path,
            f"-Xmx{heap}",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: much quicker start, ample for development
            "-XX:-UsePerfData",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.root / 'logs'}",
            f"-Dlocalkafka.node={node_id}",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.xml'}",
        ]
        if self._archive is not None and self._archive.is_file():
            cmd.append(f"-XX:SharedArchiveFile={self._archive}")
        return cmd

    def _format(self, layout: ClusterLayout, abort: threading.Event | None) -> None:
        """Run ``kafka-storage format`` (in parallel) for each node not formatted yet."""
        pending: dict[int, subprocess.Popen[str]] = {}
        voters = ",".join(
            f"{n.id}@{HOST}:{n.controller_port}:{n.directory_id}" for n in layout.nodes
        )
        for node in layout.nodes:
            log_dir = self.root / f"node-{node.id}"
            config = self._write_config(node.id)
            meta = log_dir / "meta.properties"
            if meta.exists():
                self._check_meta(meta, node)
                continue
            quorum = (
                ["--standalone"] if len(layout.nodes) == 1 else ["--initial-controllers", voters]
            )
            cmd = [*self._jvm(node.id, "256m"), "-cp", self._classpath, "kafka.tools.StorageTool"]
            cmd += ["format", "-t", layout.cluster_id, "-c", str(config), *quorum]
            pending[node.id] = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.root,
                process_group=0,
                preexec_fn=_deathsig_preexec(),  # noqa: PLW1509 (sets only the death signal)
            )
        failed: list[str] = []
        for node_id, proc in pending.items():
            try:
                out, _ = proc.communicate(timeout=self.start_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                out += f"\nno answer within {self.start_timeout:.0f} s"
            if proc.returncode != 0:
                lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("\t")]
                why = lines[-1] if lines else f"exit code {proc.returncode}"
                failed.append(f"node {node_id}: {why.removeprefix(_JAVA_MAIN_PREFIX)}")
        if failed:
            raise LocalKafkaError(
                f"formatting the Kafka storage in {self.root} failed ({'; '.join(failed)}); "
                + _CHECK_HINT.format(root=self.root)
            )
        if abort is not None and abort.is_set():
            raise StartAbortedError("interrupted while formatting")

    def _check_meta(self, meta: Path, node: NodeSpec) -> None:
        assert self.layout is not None
        try:
            props = read_properties(meta)
        except (OSError, UnicodeDecodeError) as exc:
            props = {"error": str(exc)}
        if props.get("cluster.id") != self.layout.cluster_id or props.get("node.id") != str(
            node.id
        ):
            raise LocalKafkaError(
                f"{meta} belongs to another cluster than {self.root / LAYOUT_FILE} "
                f"(cluster.id {props.get('cluster.id')}, node.id {props.get('node.id')}); "
                + _FRESH_HINT.format(root=self.root)
            )

    def _write_config(self, node_id: int) -> Path:
        assert self.layout is not None
        path = self.root / "config" / f"node-{node_id}.properties"
        props = server_properties(self.layout, node_id, self.root, self.overrides)
        path.write_text(render_properties(props))
        return path

    def _spawn(self, node_id: int) -> None:
        node = self._nodes[node_id]
        config = self._write_config(node_id)
        cmd = self._jvm(node_id, self.heap)
        node.archive_tmp = None
        if self._archive is not None and not self._archive.is_file() and node_id == 1:
            # No archive yet: have node 1 write one when it exits (the next start is ~1.5 s faster).
            with contextlib.suppress(OSError):
                self._archive.parent.mkdir(parents=True, exist_ok=True)
                node.archive_tmp = self._archive.with_name(
                    f".{self._archive.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsa"
                )
                cmd.append(f"-XX:ArchiveClassesAtExit={node.archive_tmp}")
        cmd += self.jvm_options
        cmd += ["-cp", self._classpath, "kafka.Kafka", str(config)]
        log = self.log_file(node_id)
        node.log_offset = log.stat().st_size if log.exists() else 0
        if node.out is not None:
            node.out.close()
        node.out = log.with_suffix(".out").open("wb")
        node.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=node.out,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            process_group=0,  # Ctrl-C reaches the launcher only; it stops the nodes in order
            preexec_fn=_deathsig_preexec(),  # noqa: PLW1509 (sets only the death signal)
        )
        node.expected_down = False
        node.started_at = time.monotonic()

    def _end_lone_raft_leader(self, deadline: float) -> None:
        """Spare a whole-cluster stop Kafka's fixed 5 s wait for a successor Raft leader.

        When every node stops, the last Raft leader waits 5 s for a successor that cannot be
        elected. Once it is the only node left and its log dirs are closed cleanly (its
        ``.kafka_cleanshutdown`` marker is written), it is SIGKILLed: what is left is that wait
        and the metadata log, which Raft has already flushed.
        """
        if len(self._nodes) < 2:
            return
        lone_since: float | None = None
        while time.monotonic() < deadline:
            alive = [n for n in self._nodes.values() if n.proc and n.proc.poll() is None]
            if not alive:
                return
            last = alive[0]
            marker = self.root / f"node-{last.spec.id}" / ".kafka_cleanshutdown"
            if len(alive) == 1 and last.archive_tmp is None and marker.exists():
                lone_since = lone_since or time.monotonic()
                if time.monotonic() - lone_since > 1.0 and last.proc is not None:
                    last.proc.kill()
                    return
            time.sleep(0.05)

    def _reap(self, node: _Node, deadline: float) -> None:
        if node.proc is not None:
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        if node.out is not None:
            node.out.close()
            node.out = None
        tmp, node.archive_tmp = node.archive_tmp, None
        if tmp is not None and self._archive is not None:
            # Only an archive the JVM finished writing on its own exit (0, or 143 after SIGTERM)
            # and that maps cleanly: a truncated one crashes every later JVM that maps it.
            code = node.proc.returncode if node.proc is not None else None
            if code in (0, 143) and tmp.is_file() and self._archive_maps(tmp):
                with contextlib.suppress(OSError):
                    os.replace(tmp, self._archive)
            tmp.unlink(missing_ok=True)

    def _archive_maps(self, archive: Path) -> bool:
        assert self._java is not None
        cmd = [self._java.path, "-Xshare:on", "-XX:+SuppressFatalErrorMessage"]
        cmd += [f"-XX:SharedArchiveFile={archive}", "-cp", self._classpath, "-version"]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _wait_ready(
        self, node_ids: Sequence[int], deadline: float, abort: threading.Event | None
    ) -> None:
        """Until every node in ``node_ids`` answers and all running nodes are in the metadata."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self.layout is not None
        admin: Any = None
        addresses = ",".join(self._nodes[i].spec.address for i in node_ids)
        while True:
            for i in node_ids:
                proc = self._nodes[i].proc
                if proc is not None and proc.poll() is not None:
                    if self._archive is not None and proc.returncode != 1:
                        # Not Kafka's own fatal exit (1): maybe a JVM crash mapping the class
                        # archive. Next start goes without it (and makes a new one).
                        self._archive.unlink(missing_ok=True)
                    raise LocalKafkaError(
                        self.died_message(i).replace("exited", "exited during startup", 1)
                        + f"\n({_CHECK_HINT.format(root=self.root)})"
                    )
            if abort is not None and abort.is_set():
                raise StartAbortedError("interrupted during startup")
            if admin is None and all(_answers(self._nodes[i].spec.port) for i in node_ids):
                admin = AdminClient(
                    {"bootstrap.servers": addresses, "log_level": 2, "client.id": "localkafka"}
                )
            if admin is not None:
                try:
                    metadata = admin.list_topics(timeout=1)
                except KafkaException:
                    metadata = None
                if metadata is not None:
                    if metadata.cluster_id != self.layout.cluster_id:
                        raise LocalKafkaError(
                            f"{addresses} answers for another Kafka cluster "
                            f"({metadata.cluster_id}); stop it, or pass another --port"
                        )
                    alive = {i for i, n in self._nodes.items() if not n.expected_down}
                    if alive <= set(metadata.brokers):
                        return
            if time.monotonic() > deadline:
                raise LocalKafkaError(
                    f"Kafka did not answer on {addresses} within {self.start_timeout:.0f} s; "
                    f"see {self.root / 'logs'}"
                )
            time.sleep(0.1)

    def _write_record(self) -> None:
        if self.record_file is None or self.layout is None:
            return
        from learnstream.devbroker import write_record

        write_record(
            self.record_file,
            self.layout.bootstrap_servers,
            len(self.layout.nodes),
            kind="kafka",
            pids=self.pids,
            cluster_id=self.layout.cluster_id,
            kafka_version=self.kafka_version,
            data_dir=str(self.root),
        )


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def serve(kafka: LocalKafka, stop: threading.Event | None = None) -> str:
    """Run ``kafka`` until SIGINT/SIGTERM/SIGHUP (or ``stop`` is set); returns its address.

    A node that exits on its own is reported on stderr; when none is left, LocalKafkaError.
    """
    stop = stop or threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _on_signal)
    try:
        kafka.start(abort=stop)
    except StartAbortedError:
        print("Kafka stopped during startup", flush=True)
        return ""
    nodes = f"{kafka.num_nodes} node{'s' if kafka.num_nodes > 1 else ''}"
    print(
        f"Kafka {kafka.kafka_version} ({nodes}) listening on {kafka.bootstrap_servers}", flush=True
    )
    where = f"address recorded in {kafka.record_file}; " if kafka.record_file else ""
    print(f"{where}data in {kafka.root}; stop with Ctrl-C", flush=True)
    reported: set[int] = set()
    try:
        while not stop.wait(0.5):
            for node_id in kafka.dead_nodes():
                if node_id not in reported:
                    reported.add(node_id)
                    print(kafka.died_message(node_id), file=sys.stderr, flush=True)
            if not kafka.running:
                raise LocalKafkaError("every Kafka node has exited; see the lines above")
    finally:
        kafka.stop()
        print("Kafka stopped", flush=True)
    return kafka.bootstrap_servers
