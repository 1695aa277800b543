"""`learnstream kafka` without Java running: configuration, the port record, the jar cache,
and the one-line errors users meet."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from learnstream import localkafka as lk
from learnstream.cli import cli
from learnstream.core.kafka import _reachable, is_dev_broker
from learnstream.core.settings import load_settings
from learnstream.devbroker import write_record


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# --- server.properties --------------------------------------------------------------------------


def test_single_node_properties(tmp_path: Path) -> None:
    layout = lk.ClusterLayout.create(1)
    node = layout.nodes[0]
    props = lk.server_properties(layout, 1, tmp_path, {"log.retention.hours": "1"})

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.bootstrap.servers"] == f"127.0.0.1:{node.controller_port}"
    assert props["listeners"] == (
        f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
    )
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "node-1")
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "min.insync.replicas",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key
    assert props["num.partitions"] == "4"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert props["log.retention.hours"] == "1"  # overrides go on top


def test_three_node_properties(tmp_path: Path) -> None:
    layout = lk.ClusterLayout.create(3)
    props = lk.server_properties(layout, 2, tmp_path)
    node = layout.node(2)

    assert props["node.id"] == "2"
    assert props["controller.quorum.bootstrap.servers"] == ",".join(
        f"127.0.0.1:{n.controller_port}" for n in layout.nodes
    )
    assert f"PLAINTEXT://127.0.0.1:{node.port}" in props["listeners"]
    assert props["log.dirs"] == str(tmp_path / "node-2")
    assert props["default.replication.factor"] == "3"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    with pytest.raises(ValueError, match=r"node ids are 1\.\.3"):
        lk.server_properties(layout, 4, tmp_path)


def test_rendered_properties_read_back(tmp_path: Path) -> None:
    path = tmp_path / "x.properties"
    path.write_text(lk.render_properties({"log.dirs": r"C:\kafka", "a": "b=c"}))
    assert path.read_text().startswith("#")
    assert lk.read_properties(path) == {"log.dirs": r"C:\\kafka", "a": "b=c"}


# --- ids, ports and the record in the data dir --------------------------------------------------


def test_new_layout_ids_and_ports() -> None:
    layout = lk.ClusterLayout.create(3)
    ports = [n.port for n in layout.nodes] + [n.controller_port for n in layout.nodes]
    assert len(set(ports)) == 6
    assert [n.id for n in layout.nodes] == [1, 2, 3]
    ids = [layout.cluster_id] + [n.directory_id for n in layout.nodes]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == 4
    assert layout.bootstrap_servers == ",".join(f"127.0.0.1:{n.port}" for n in layout.nodes)

    fixed = lk.ClusterLayout.create(3, port=29092)
    assert [n.port for n in fixed.nodes] == [29092, 29093, 29094]
    assert not {n.controller_port for n in fixed.nodes} & {29092, 29093, 29094}


def test_layout_is_kept_across_restarts(tmp_path: Path) -> None:
    first = lk.load_or_create_layout(tmp_path, 1)
    assert json.loads((tmp_path / "cluster.json").read_text())["cluster_id"] == first.cluster_id

    again = lk.load_or_create_layout(tmp_path, 1)  # port 0: the recorded one
    assert again == first

    moved = lk.load_or_create_layout(tmp_path, 1, port=first.nodes[0].port + 1)
    assert moved.cluster_id == first.cluster_id
    assert moved.nodes[0].port == first.nodes[0].port + 1
    assert moved.nodes[0].controller_port == first.nodes[0].controller_port  # voters keep it
    assert lk.load_or_create_layout(tmp_path, 1) == moved  # and the move is remembered


def test_layout_errors_say_what_to_do(tmp_path: Path) -> None:
    lk.load_or_create_layout(tmp_path, 1)
    with pytest.raises(lk.LocalKafkaError, match="holds a 1-node cluster: start it with --nodes 1"):
        lk.load_or_create_layout(tmp_path, 3)

    layout = lk.load_or_create_layout(tmp_path, 1)
    with pytest.raises(lk.LocalKafkaError, match="controller port; choose another --port"):
        layout.with_port(layout.nodes[0].controller_port)

    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(lk.LocalKafkaError, match=r"unreadable .*remove .* to start afresh"):
        lk.load_or_create_layout(tmp_path, 1)

    bare = tmp_path / "bare"
    (bare / "node-1").mkdir(parents=True)
    (bare / "node-1" / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(lk.LocalKafkaError, match=r"holds Kafka data but no cluster\.json"):
        lk.load_or_create_layout(bare, 1)

    with pytest.raises(lk.LocalKafkaError, match="need ports"):
        lk.ClusterLayout.create(3, port=65534)


def test_port_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not lk.port_free(sock.getsockname()[1])
    assert lk.port_free(lk.free_ports(1)[0])


# --- Java ---------------------------------------------------------------------------------------


def test_missing_java_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(lk.LocalKafkaError, match=r"Java not found: .*install one .*JAVA_HOME"):
        lk.find_java({"PATH": str(tmp_path)})


def test_old_java_is_refused_and_java_home_wins(tmp_path: Path) -> None:
    old = tmp_path / "old" / "bin"
    old.mkdir(parents=True)
    _script(old / "java", "echo 'java version \"1.8.0_392\"' >&2\n")
    with pytest.raises(lk.LocalKafkaError, match=r"needs Java 17 or newer, but .* is Java 8"):
        lk.find_java({"PATH": str(old)})

    home = tmp_path / "jdk21"
    (home / "bin").mkdir(parents=True)
    _script(home / "bin" / "java", "echo 'openjdk version \"21.0.2\" 2024-01-16' >&2\n")
    java = lk.find_java({"PATH": str(old), "JAVA_HOME": str(home)})
    assert (java.path, java.major) == (str(home / "bin" / "java"), 21)


def test_cli_without_java_exits_1_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    result = CliRunner().invoke(cli, ["kafka"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Java not found")
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_cli_rejects_bad_set() -> None:
    result = CliRunner().invoke(cli, ["kafka", "--set", "novalue"])
    assert result.exit_code == 2
    assert "'novalue' is not KEY=VALUE" in result.output


def test_cli_refuses_when_a_broker_is_recorded(tmp_path: Path) -> None:
    settings = load_settings()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        write_record(settings.broker_file, address, 1, kind="kafka")
        result = CliRunner().invoke(cli, ["kafka"])
    assert result.exit_code == 1
    assert f"a local Kafka is already running on {address}" in result.output


# --- the jar cache ------------------------------------------------------------------------------

FAKE_MVN = """for a in "$@"; do
  case "$a" in -DoutputDirectory=*) out="${a#-DoutputDirectory=}";; esac
done
echo "$@" >> "$(dirname "$0")/calls"
mkdir -p "$out" && echo jar > "$out/kafka_2.13-4.4.0.jar" && echo jar > "$out/log4j-core.jar"
"""


def test_jars_are_resolved_once_then_read_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "mvn", FAKE_MVN)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    said: list[str] = []

    jars = lk.resolve_jars(cache, said.append)
    lib = cache / lk.KAFKA_VERSION / "lib"
    assert [j.name for j in jars] == ["kafka_2.13-4.4.0.jar", "log4j-core.jar"]
    assert all(j.parent == lib for j in jars)
    assert "dependency:copy-dependencies" in (bin_dir / "calls").read_text()
    assert said and "with Maven" in said[0]
    assert not list(cache.glob(".*tmp*"))  # the staging folder is gone
    assert lk.jars_cached(cache)

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no Maven now: the cache serves
    assert lk.resolve_jars(cache) == jars

    (lib / "log4j-core.jar").unlink()  # incomplete cache, no Maven: say so
    assert not lk.jars_cached(cache)
    with pytest.raises(lk.LocalKafkaError, match=r"not in the cache .* Maven is not on PATH"):
        lk.resolve_jars(cache)


def test_maven_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(
        tmp_path / "mvn",
        "echo '[ERROR] Failed to execute goal: Could not transfer artifact (offline)'\nexit 1\n",
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(lk.LocalKafkaError) as info:
        lk.resolve_jars(tmp_path / "cache")
    message = str(info.value)
    assert "Maven could not resolve Kafka 4.4.0 (Failed to execute goal" in message
    assert "\n" not in message
    assert not (tmp_path / "cache" / lk.KAFKA_VERSION).exists()


def test_kafka_home_needs_libs(tmp_path: Path) -> None:
    with pytest.raises(lk.LocalKafkaError, match="has no libs/kafka_"):
        lk.kafka_home_jars(tmp_path)
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-4.4.0.jar").write_text("")
    jars = lk.kafka_home_jars(tmp_path)
    assert [j.name for j in jars] == ["kafka_2.13-4.4.0.jar"]
    assert lk.jars_version([tmp_path / "kafka-clients-3.9.1.jar", *jars]) == "4.4.0"


def test_packaged_files_ship() -> None:
    pom = lk.packaged_file("pom.xml").decode()
    assert f"<kafka.version>{lk.KAFKA_VERSION}</kafka.version>" in pom
    assert "kafka_2.13" in pom and "log4j-slf4j-impl" in pom
    assert 'Root level="WARN"' in lk.packaged_file("log4j2.xml").decode()


# --- logs, records ------------------------------------------------------------------------------


def test_log_tail_skips_stack_frames_and_older_runs(tmp_path: Path) -> None:
    log = tmp_path / "node-1.log"
    log.write_text("old run\n")
    offset = log.stat().st_size
    with log.open("a") as fh:
        fh.write("ERROR Exiting Kafka\norg.Boom: bad\n\tat a.b(C.java:1)\n\t... 3 more\n")
    assert lk.log_tail(log, since=offset) == "ERROR Exiting Kafka\norg.Boom: bad"
    assert lk.log_tail(tmp_path / "missing.log") == ""


def test_recorded_local_kafka_is_not_the_dev_broker(tmp_path: Path) -> None:
    settings = load_settings()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        dead = f"127.0.0.1:{lk.free_ports(1)[0]}"
        record = write_record(settings.broker_file, f"{dead},{address}", 3, kind="kafka", pids=[1])
        assert record["pid"] == os.getpid() and record["pids"] == [1]
        assert _reachable(f"{dead},{address}")  # any node answering will do
        assert not is_dev_broker(settings)
        write_record(settings.broker_file, address, 1)  # the dev broker's record has no kind
        assert is_dev_broker(settings)
