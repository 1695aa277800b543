"""`learnstream replay` without a broker: new offsets, the dry-run table, refusals, options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from learnstream import replay as rp
from learnstream.replay import (
    GroupInfo,
    Member,
    PartitionPlan,
    PartitionState,
    Target,
    choose_target,
    first_at_or_after,
    format_table,
    new_offset,
    parse_time,
    plan_errors,
    plan_resets,
    refusal,
)
from learnstream.replay_commands import backfill, replay

STATE = PartitionState("t", 0, low=10, high=100, committed=60)
FRESH = PartitionState("t", 1, low=0, high=50, committed=None)


def test_parse_time_accepts_iso8601_and_unix_ms() -> None:
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000  # no zone: UTC
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20.250Z") == 1_700_000_000_250
    assert parse_time("1700000000000") == 1_700_000_000_000
    with pytest.raises(ValueError, match="neither ISO 8601"):
        parse_time("yesterday")


def test_exactly_one_target_is_required() -> None:
    assert choose_target(to_start=True) == Target("start")
    assert choose_target(to_end=True) == Target("end")
    assert choose_target(to_offset=0) == Target("offset", 0)
    assert choose_target(shift_by=-5) == Target("shift", -5)
    assert choose_target(to_time="1700000000000") == Target("time", 1_700_000_000_000)
    with pytest.raises(ValueError, match="exactly one"):
        choose_target()
    with pytest.raises(ValueError, match=r"got 2"):
        choose_target(to_start=True, shift_by=3)


@pytest.mark.parametrize(
    ("target", "time_offset", "expected"),
    [
        (Target("start"), None, (10, "")),
        (Target("end"), None, (100, "")),
        (Target("offset", 42), None, (42, "")),
        (Target("offset", 3), None, (10, "clamped to the low watermark 10")),
        (Target("offset", 500), None, (100, "clamped to the high watermark 100")),
        (Target("shift", -20), None, (40, "")),
        (Target("shift", 15), None, (75, "")),
        (Target("shift", -1000), None, (10, "clamped to the low watermark 10")),
        (Target("shift", 1000), None, (100, "clamped to the high watermark 100")),
        (Target("time", 1), 30, (30, "")),
        (Target("time", 1), None, (100, "no record at or after the time: the end")),
        (Target("time", 1), -1, (100, "no record at or after the time: the end")),
        (Target("time", 1), 5, (10, "clamped to the low watermark 10")),
    ],
)
def test_new_offset(target: Target, time_offset: int | None, expected: tuple[int, str]) -> None:
    assert new_offset(STATE, target, time_offset) == expected


def test_shift_needs_a_committed_offset() -> None:
    plans = plan_resets([STATE, FRESH], Target("shift", -5))
    assert [p.new for p in plans] == [55, None]
    assert plan_errors(plans) == [
        "t[1]: no committed offset to shift (50 records; leave the partition out with "
        "--partition, or use --to-start/--to-offset/--to-time)"
    ]
    # Every other target works without a committed offset.
    assert plan_errors(plan_resets([FRESH], Target("start"))) == []


def test_plans_are_sorted_and_use_the_time_lookup() -> None:
    a1 = PartitionState("a", 1, 0, 10, 10)
    a0 = PartitionState("a", 0, 0, 10, 10)
    b0 = PartitionState("b", 0, 0, 10, None)
    plans = plan_resets([b0, a1, a0], Target("time", 5), {("a", 0): 3, ("a", 1): None})
    assert [(p.state.topic, p.state.partition, p.new) for p in plans] == [
        ("a", 0, 3),
        ("a", 1, 10),
        ("b", 0, 10),
    ]


def test_lags() -> None:
    plan = PartitionPlan(STATE, 40)
    assert (plan.lag_now, plan.lag_after, plan.changes) == (40, 60, True)
    fresh = PartitionPlan(FRESH, 0)
    assert (fresh.lag_now, fresh.lag_after, fresh.changes) == (None, 50, True)
    assert not PartitionPlan(STATE, 60).changes


def test_first_at_or_after() -> None:
    records = [(0, 100), (1, 300), (2, 200), (3, 400)]
    assert first_at_or_after(records, 250) == 1
    assert first_at_or_after(records, 50) == 0
    assert first_at_or_after(records, 401) is None


def test_dry_run_table_shows_current_new_lag_and_totals() -> None:
    plans = plan_resets([STATE, FRESH], Target("start"))
    text = format_table("learnstream-sink", Target("start"), plans)
    lines = text.splitlines()
    assert lines[0] == "group learnstream-sink: reset to the start"
    assert lines[1].split() == [
        "TOPIC",
        "PARTITION",
        "LOW",
        "HIGH",
        "CURRENT",
        "NEW",
        "LAG-NOW",
        "LAG-AFTER",
    ]
    assert lines[2].split() == ["t", "0", "10", "100", "60", "10", "40", "90"]
    assert lines[3].split() == ["t", "1", "0", "50", "-", "0", "-", "50"]
    assert lines[4] == (
        "total: 2 partitions, 2 change; lag now 40, after 140; 50 records to re-process, "
        "0 skipped; 1 without a committed offset"
    )


def test_table_notes_clamping_and_skips() -> None:
    plans = plan_resets([STATE], Target("offset", 1000))
    text = format_table("g", Target("offset", 1000), plans)
    assert "clamped to the high watermark 100" in text.splitlines()[2]
    assert "0 records to re-process, 40 skipped" in text


def test_target_descriptions() -> None:
    assert Target("start").describe() == "to the start"
    assert Target("offset", 7).describe() == "to offset 7"
    assert Target("shift", -3).describe() == "shifted by -3"
    assert "2023-11-14T22:13:20+00:00" in Target("time", 1_700_000_000_000).describe()


def test_refusal_names_active_members() -> None:
    info = GroupInfo(
        state="STABLE",
        members=(
            Member("m-1", "learnstream-sink", "/10.0.0.5", ("interactions.scored[0]",)),
            Member("m-2", "rdkafka", "/10.0.0.6"),
        ),
    )
    reason = refusal("learnstream-sink", info, force=False)
    assert reason is not None
    assert "2 active member(s)" in reason
    assert (
        "member m-1 (client learnstream-sink, host /10.0.0.5) holding interactions.scored[0]"
        in reason
    )
    assert "member m-2 (client rdkafka, host /10.0.0.6)" in reason
    assert refusal("learnstream-sink", info, force=True) is None
    assert not info.may_be_empty


def test_refusal_when_the_broker_cannot_describe_groups() -> None:
    info = GroupInfo(error="_UNSUPPORTED_FEATURE: not supported")
    reason = refusal("g", info, force=False)
    assert reason is not None
    assert "cannot describe consumer groups (_UNSUPPORTED_FEATURE" in reason
    assert "--force" in reason
    assert refusal("g", info, force=True) is None
    assert info.may_be_empty


def test_no_refusal_for_an_empty_group() -> None:
    assert refusal("g", GroupInfo(state="EMPTY"), force=False) is None


class _Err:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return f"error {self._code}"


@pytest.mark.parametrize(
    ("info", "code", "method", "failed"),
    [
        (GroupInfo(error="unsupported"), rp.UNKNOWN_MEMBER_ID, "member", False),
        (GroupInfo(state="EMPTY"), rp.UNKNOWN_MEMBER_ID, "member", False),
        (GroupInfo(members=(Member("m", "c", "h"),)), rp.UNKNOWN_MEMBER_ID, "admin", True),
        (GroupInfo(error="unsupported"), 30, "admin", True),
    ],
)
def test_member_commit_fallback_only_when_the_group_may_be_empty(
    monkeypatch: pytest.MonkeyPatch, info: GroupInfo, code: int, method: str, failed: bool
) -> None:
    committed: list[dict[Any, int]] = []
    monkeypatch.setattr(
        rp, "alter_offsets", lambda conf, g, offsets, t: dict.fromkeys(offsets, _Err(code))
    )
    monkeypatch.setattr(
        rp, "commit_as_member", lambda conf, g, offsets, t: committed.append(offsets)
    )
    plans = plan_resets([STATE, FRESH], Target("start"))
    outcome = rp.apply_plan({}, "g", plans, info, commit_by_joining=True)  # the mock's profile
    assert outcome.method == method
    assert bool(outcome.failed) is failed
    assert committed == ([] if failed else [{("t", 0): 10, ("t", 1): 0}])
    # A real broker's profile never falls back: its refusal is reported as it is.
    real = rp.apply_plan({}, "g", plans, info)
    assert real.method == "admin" and real.failed
    assert len(committed) <= 1


def test_apply_plan_succeeds_with_the_admin_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rp, "alter_offsets", lambda conf, g, offsets, t: {})
    outcome = rp.apply_plan({}, "g", plan_resets([STATE], Target("end")), GroupInfo())
    assert (outcome.method, outcome.failed, outcome.note) == ("admin", {}, "")


# --- the click commands, without a broker ----------------------------------------------------


@pytest.fixture
def no_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEARNSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LEARNSTREAM_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    return tmp_path


def test_replay_needs_exactly_one_target(no_broker: Path) -> None:
    result = CliRunner().invoke(replay, ["--group", "g", "--topic", "t"])
    assert result.exit_code == 2
    assert "exactly one of --to-start" in result.output
    result = CliRunner().invoke(replay, ["--group", "g", "--topic", "t", "--to-start", "--to-end"])
    assert result.exit_code == 2


def test_replay_rejects_a_bad_time(no_broker: Path) -> None:
    result = CliRunner().invoke(replay, ["--group", "g", "--topic", "t", "--to-time", "soon"])
    assert result.exit_code == 2
    assert "neither ISO 8601" in result.output


def test_commands_without_a_broker_fail_clearly(no_broker: Path) -> None:
    result = CliRunner().invoke(replay, ["--group", "g", "--topic", "t", "--to-start"])
    assert result.exit_code == 1
    assert "no Kafka broker" in result.output
    jsonl = no_broker / "a.jsonl"
    jsonl.write_text("{}\n")
    result = CliRunner().invoke(backfill, ["--source", "aidb", str(jsonl)])
    assert result.exit_code == 1
    assert "no Kafka broker" in result.output


def test_help_documents_rpk_and_environment(no_broker: Path) -> None:
    from learnstream.cli import cli

    added = "replay" not in cli.commands
    cli.add_command(replay)
    try:
        text = CliRunner().invoke(cli, ["replay", "--help"]).output
    finally:
        if added:
            cli.commands.pop("replay", None)
    assert "rpk group seek G --to start|end|<unix-ms> --topics T" in text
    assert "rpk group describe G" in text
    assert "LEARNSTREAM_REPLAY_GROUP" in text
    assert "LEARNSTREAM_REPLAY_SHIFT_BY" in text
    assert rp.__doc__ is not None and "rpk group seek" in rp.__doc__


def test_module_imports_only_click() -> None:
    import subprocess
    import sys

    code = (
        "import sys, learnstream.replay_commands; "
        "print(any(m.startswith(('confluent_kafka', 'pydantic')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
