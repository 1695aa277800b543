"""The README's main job: `learnstream demo` on embedded defaults."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import Source, parse_event
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration


def test_example_files_are_valid_and_cover_every_source() -> None:
    for source in Source:
        lines = (EXAMPLES / f"{source.value}-events.jsonl").read_bytes().splitlines()
        types = {parse_event(source, line).event_type for line in lines if line.strip()}
        assert len(lines) >= 20
        assert len(types) >= 5


def _user_env(data_dir: Path) -> dict[str, str]:
    """A user's environment (their PATH, whatever it holds) with a HOME and data dir that no
    earlier run has touched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update({"LEARNSTREAM_DATA_DIR": str(data_dir), "HOME": str(data_dir)})
    return env


def _learnstream(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "learnstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# The first test to ask for `demo_twice` waits for three demo runs (about 80 s each on 2 idle
# cores, more under load): one, then two at once.
DEMO_TWICE_TIMEOUT = 1500


@pytest.fixture(scope="module")
def demo_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """`learnstream demo` on one data dir: one run, then right after it two runs at once."""
    data_dir = tmp_path_factory.mktemp("demo")
    first = _learnstream(_user_env(data_dir), "demo", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "learnstream", "demo"],
            env=_user_env(data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [first.stdout]
    for proc in both:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, out + err
        outputs.append(out)
    return data_dir, outputs


def _run_dir(text: str) -> Path:
    found = re.search(r"^run \S+: its state goes to (\S+)$", text, re.M)
    assert found, text
    return Path(found[1])


def _check_run(text: str) -> None:
    """What one demo run's summary must show, and its run folder must hold."""
    rows = {
        line.split()[0]: line.split()[1:4]
        for line in text.split("value scores", maxsplit=1)[0].splitlines()
        if line.split() and line.split()[0] in {s.value for s in Source}
    }
    for source in Source:
        n = sum(
            1
            for line in (EXAMPLES / f"{source.value}-events.jsonl").read_bytes().splitlines()
            if line.strip()
        )
        assert rows[source.value] == [str(n), str(n), "0"], text
    run = _run_dir(text)
    assert (run / "schemas" / "index.json").exists()
    assert not (run / "broker.json").exists()  # the in-process broker stopped cleanly
    # Scored, stored in PostgreSQL, extracted into patterns and dataset, trained once.
    counts = re.search(r"value scores \((\d+) scored, (\d+) lifecycle\)", text)
    assert counts and int(counts[1]) + int(counts[2]) == sum(int(r[0]) for r in rows.values())
    pg = {
        line.split()[0]: int(line.split()[1])
        for line in text.split("PostgreSQL telemetry_events")[1].splitlines()[1:5]
    }
    assert sum(pg.values()) == sum(int(rows[s.value][0]) for s in Source), text
    learned = re.search(
        r"patterns learned: (\d+) new, (\d+) merged; dataset .*: (\d+) examples", text
    )
    assert learned and int(learned[1]) > 0 and int(learned[3]) > 0, text
    # The sample's chit-chat (vscode session vs-3d91a5) scores high but teaches nothing.
    gate = re.search(r"substance gate: (\d+) of (\d+) candidates refused \(([^)]*)\)", text)
    assert gate and int(gate[1]) >= 3 and int(gate[2]) > int(gate[1]), text
    assert {"repetition", "acknowledgement"} & set(re.findall(r"[a-z_]+", gate[3])), gate[3]
    # Every example fits the tiny model; the summary names what the demo lowered.
    lengths = re.search(r"example lengths: \d+-(\d+) tokens, (\d+) of (\d+) over", text)
    assert lengths and int(lengths[1]) <= 512 and lengths[2] == "0", text
    assert lengths[3] == learned[3], text
    assert "TRAINING__MAX_STEPS=40 (default 3 epochs" in text, text
    assert re.search(r"training trigger \w+: manual", text), text
    result = re.search(r"training result: (PROMOTED|REJECTED): ", text)
    assert result, text
    # The decision rests on an eval split of >= 10 examples, with the numbers shown.
    split = re.search(
        r"eval split \((\d+) examples, never trained on; (\d+) trained\): loss active "
        r"[\d.]+ -> candidate [\d.]+ \([+-][\d.]+%\); 95% interval \[",
        text,
    )
    assert split and int(split[1]) >= 10 and int(split[1]) + int(split[2]) == int(learned[3])
    assert re.search(r"golden set \(\d+ examples, evals/golden.jsonl\): loss active", text)
    manifest = json.loads(next((run / "adapters").glob("*/manifest.json")).read_text())
    assert (manifest.get("active") is not None) == (result[1] == "PROMOTED"), manifest
    lines = (run / "dataset" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == int(learned[3]) and all(json.loads(line)["messages"] for line in lines)
    assert f"This run's state: {run} (" in text, text
    assert f"learnstream --data-dir {run} db -c " in text, text


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TWICE_TIMEOUT)
def test_demo_runs_the_whole_loop_on_embedded_defaults(demo_twice: tuple[Path, list[str]]) -> None:
    _check_run(demo_twice[1][0])


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TWICE_TIMEOUT)
def test_a_second_demo_right_after_the_first_and_two_at_once_train_again(
    demo_twice: tuple[Path, list[str]],
) -> None:
    data_dir, (first, *concurrent) = demo_twice
    for text in concurrent:  # learned again, triggered and trained: nothing deduplicated it
        _check_run(text)
    runs = [_run_dir(first), *(_run_dir(text) for text in concurrent)]
    assert len(set(runs)) == 3 and all(run.parent == data_dir / "demo" for run in runs)
    assert (data_dir / "demo" / "latest").resolve() in {run.resolve() for run in runs[1:]}
    assert all(run.exists() for run in runs)  # the last 3 runs' states are kept


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TWICE_TIMEOUT)
def test_db_command_queries_the_demo_database(demo_twice: tuple[Path, list[str]]) -> None:
    data_dir, _ = demo_twice
    env = _user_env(data_dir)
    latest = str(data_dir / "demo" / "latest")
    sql = "select source, count(*) from telemetry_events group by source order by source"
    expected = {
        s.value: sum(1 for line in (EXAMPLES / f"{s.value}-events.jsonl").open() if line.strip())
        for s in Source
    }
    # Through psql (the system's or pgserver's), as the user would type it.
    out = _learnstream(env, "--data-dir", latest, "db", "-c", sql)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {
        cells[0]: int(cells[1])
        for line in out.stdout.splitlines()
        if len(cells := [c.strip() for c in line.split("|")]) == 2 and cells[1].isdigit()
    }
    assert rows == expected, out.stdout
    # Through psycopg: tab-separated rows under a header.
    out = _learnstream(env, "--data-dir", latest, "db", "--no-psql", "-c", sql)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "source\tcount" and lines[-1] == "(4 rows)", out.stdout
    assert {a: int(b) for a, b in (line.split("\t") for line in lines[1:-1])} == expected
    # Interactive psql on stdin; while it holds the embedded server, a command given its URL
    # as LEARNSTREAM_POSTGRES__URL (from another, empty data dir) reads the same rows.
    url = _learnstream(env, "--data-dir", latest, "db", "--print-url").stdout.strip()
    assert url.startswith("postgresql://") and "host=" in url, url
    psql = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "--data-dir", latest, "db"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert psql.stdin is not None
        psql.stdin.write("select 'psql says ' || count(*) from telemetry_events;\n")
        psql.stdin.flush()
        assert psql.stdout is not None
        while "psql says" not in (line := psql.stdout.readline()):
            assert line, psql.stderr.read() if psql.stderr else ""
        assert line.split()[-1] == str(sum(expected.values())), line
        other = _user_env(data_dir / "elsewhere") | {"LEARNSTREAM_POSTGRES__URL": url}
        out = _learnstream(other, "db", "--no-psql", "-c", sql)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.splitlines()[1:-1] == lines[1:-1], out.stdout
        assert not (data_dir / "elsewhere" / "postgres").exists()
    finally:
        if psql.stdin is not None:
            psql.stdin.close()  # end of input: psql exits, and with it the embedded server
        assert psql.wait(60) == 0
    # A bad query and psql-less interactive use: one line each, exit 1.
    out = _learnstream(env, "--data-dir", latest, "db", "--no-psql", "-c", "select nope")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        'Error: query failed: column "nope" does not exist'
    ], out.stderr
    out = _learnstream(env, "--data-dir", latest, "db", "--no-psql")
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "psql" in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TWICE_TIMEOUT)
def test_adapters_list_shows_the_demo_adapters_without_base_model(
    demo_twice: tuple[Path, list[str]],
) -> None:
    data_dir, outputs = demo_twice
    latest = (data_dir / "demo" / "latest").resolve()
    (text,) = [t for t in outputs if _run_dir(t).resolve() == latest]
    out = _learnstream(_user_env(data_dir), "--data-dir", str(latest), "adapters", "list")
    assert out.returncode == 0, out.stdout + out.stderr
    base = re.search(r"base model: a tiny causal LM built locally in (\S+)", text)
    assert base, text
    assert f"base model {base[1]} (" in out.stdout, out.stdout
    assert re.search(r"^[* ] v0001 .* (promoted|rejected)$", out.stdout, re.M), out.stdout


@pytest.mark.slow
def test_demo_fails_fast_in_one_line_when_nothing_can_be_learned(tmp_path: Path) -> None:
    # Lifecycle events only: scored (as lifecycle), stored, but no candidate, so no training.
    examples = tmp_path / "examples"
    examples.mkdir()
    lines = [
        line
        for line in (EXAMPLES / "ralph-events.jsonl").read_text().splitlines()
        if '"iteration_started"' in line
    ][:5]
    (examples / "ralph-events.jsonl").write_text("\n".join(lines) + "\n")
    out = _learnstream(
        _user_env(tmp_path / "data"), "demo", "--examples", str(examples), timeout=300
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "Error: demo: nothing was learned (0 candidates, 0 refused); see "
        f"{_run_dir(out.stdout)}/logs/worker.log and `learnstream dataset stats`"
    ], out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.slow
def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    import signal
    import threading
    import time

    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update({"LEARNSTREAM_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)})
    demo = subprocess.Popen(
        [sys.executable, "-m", "learnstream", "demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[str] = []  # read as it comes, so that a full pipe never blocks the demo
    reader = threading.Thread(target=lambda: errors.extend(demo.stderr or ()), daemon=True)
    reader.start()
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:
            seen.append(line)
            if line.startswith("published "):  # the children are up and working
                break
        assert seen and seen[-1].startswith("published "), "".join(seen)
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3
        pid_file = _run_dir("".join(seen)) / "postgres" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(120)
        reader.join(30)
        err = "".join(errors)
        assert code == 143, (
            f"exit code {code} after SIGTERM, not 143\n--- stdout:\n{''.join(seen)}"
            f"{demo.stdout.read()}--- stderr:\n{err}"
        )
        _, gone_alive = psutil.wait_procs(children, timeout=30)
        assert gone_alive == [], [p.cmdline() for p in gone_alive]
        if postmaster is not None:
            deadline = time.monotonic() + 30
            while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not psutil.pid_exists(postmaster), "the embedded PostgreSQL kept running"
        assert "demo stopped" in err, err
    finally:
        if demo.poll() is None:
            demo.kill()
