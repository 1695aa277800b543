"""The suite's markers do what they say: ``-m "not integration"`` leaves out every test
under tests/integration/, also one whose module does not mark itself."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_not_integration_leaves_out_the_integration_tests() -> None:
    # test_agents_inprocess.py marks itself ``slow`` only.
    module = "tests/integration/test_agents_inprocess.py"
    kept = collect("-m", "integration", module)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "test_score_agent_scores_forwards_high_value_and_dead_letters" in kept.stdout
    left_out = collect("-m", "not integration", module)
    assert left_out.returncode == 5, left_out.stdout + left_out.stderr  # 5: nothing collected
    assert "test_score_agent" not in left_out.stdout
