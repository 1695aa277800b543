"""The replay plan on its own (learnstream.replay_plan): what to commit, fallbacks, checks."""

from __future__ import annotations

import subprocess
import sys

from learnstream.replay_plan import (
    UNKNOWN_MEMBER_ID,
    GroupInfo,
    Member,
    PartitionState,
    Target,
    format_table,
    may_commit_by_joining,
    offset_mismatches,
    offsets_to_commit,
    plan_errors,
    plan_resets,
)

A = PartitionState("t", 0, low=10, high=100, committed=60)
B = PartitionState("t", 1, low=0, high=50, committed=None)
C = PartitionState("u", 0, low=0, high=8, committed=8)


def test_offsets_to_commit_are_the_new_offsets_that_exist() -> None:
    assert offsets_to_commit(plan_resets([A, B, C], Target("start"))) == {
        ("t", 0): 10,
        ("t", 1): 0,
        ("u", 0): 0,
    }
    # A shift cannot move t[1] (no committed offset): it is not committed.
    assert offsets_to_commit(plan_resets([A, B, C], Target("shift", -3))) == {
        ("t", 0): 57,
        ("u", 0): 5,
    }
    assert offsets_to_commit([]) == {}


def test_commit_by_joining_only_for_an_all_unknown_member_refusal_of_a_maybe_empty_group() -> None:
    keys = [("t", 0), ("t", 1)]
    everyone = dict.fromkeys(keys, UNKNOWN_MEMBER_ID)
    assert may_commit_by_joining(keys, everyone, GroupInfo(state="EMPTY"))
    assert may_commit_by_joining(keys, everyone, GroupInfo(error="cannot describe"))
    member = GroupInfo(members=(Member("m", "c", "h"),))
    assert not may_commit_by_joining(keys, everyone, member)
    assert not may_commit_by_joining(keys, {("t", 0): UNKNOWN_MEMBER_ID}, GroupInfo())
    other = {("t", 0): UNKNOWN_MEMBER_ID, ("t", 1): 30}
    assert not may_commit_by_joining(keys, other, GroupInfo())


def test_offset_mismatches_name_each_partition_not_as_asked() -> None:
    wanted = {("t", 0): 5, ("t", 1): None, ("u", 2): 7}
    assert offset_mismatches(wanted, {("t", 0): 5, ("t", 1): None, ("u", 2): 7}) == []
    assert offset_mismatches(wanted, {("t", 0): 4, ("t", 1): None}) == [
        "t[0] is 4, not 5",
        "u[2] is None, not 7",
    ]


def test_the_plan_module_needs_no_kafka_client() -> None:
    code = (
        "import sys, learnstream.replay_plan\n"
        "print([m for m in ('confluent_kafka', 'learnstream.replay', 'click') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_shift_leaves_empty_uncommitted_partitions_alone_and_says_so() -> None:
    empty = PartitionState("t", 2, low=0, high=0, committed=None)
    expired = PartitionState("t", 3, low=40, high=40, committed=None)  # records aged out
    plans = plan_resets([A, empty, expired], Target("shift", -1))
    assert [(p.new, p.left) for p in plans] == [(59, False), (None, True), (None, True)]
    assert plan_errors(plans) == []
    assert offsets_to_commit(plans) == {("t", 0): 59}
    text = format_table("g", Target("shift", -1), plans)
    assert text.count("empty, nothing committed: left as it is") == 2
    assert "3 partitions, 1 change, 2 left as they are (empty, nothing committed)" in text
    assert "without a committed offset" not in text  # the two are told apart, not both
    # A partition with records and no committed offset is still an error, with a way out.
    mixed = plan_resets([A, empty, B], Target("shift", -1))
    assert [p.left for p in mixed] == [False, False, True]  # t[0], t[1], t[2]
    (error,) = plan_errors(mixed)
    assert error.startswith("t[1]: no committed offset to shift (50 records;")
    assert "--partition" in error
    assert "1 without a committed offset" in format_table("g", Target("shift", -1), mixed)
    # Other targets move empty partitions as before.
    assert [p.left for p in plan_resets([empty], Target("start"))] == [False]
    assert offsets_to_commit(plan_resets([empty], Target("end"))) == {("t", 2): 0}
