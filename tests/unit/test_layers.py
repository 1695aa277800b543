"""The one-way layers (`[tool.importlinter]` in pyproject.toml) hold, and break when crossed."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "learnstream", "scorers", "extractors", "trainers", "consumers", "streams")


def _contracts() -> dict[str, dict[str, list[str]]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_the_core_contract_forbids_every_module_of_the_top() -> None:
    """A new command module beside the CLI is covered by the core's contract at once."""
    (core,) = [c for name, c in _contracts().items() if name.startswith("the core")]
    assert core["source_modules"] == ["learnstream.core"]
    top = {
        f"learnstream.{p.stem}"
        for p in (ROOT / "learnstream").glob("*.py")
        if p.stem not in {"__init__", "__main__"}
    }
    assert top - set(core["forbidden_modules"]) == set()


@pytest.mark.slow
def test_an_upward_import_breaks_the_build(tmp_path: Path) -> None:
    """The contracts pass on the tree, and fail once the core imports the CLI."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")

    def run() -> subprocess.CompletedProcess[str]:
        env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(lint).parent)}
        return subprocess.run(
            [lint, "--no-cache"], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
        )

    clean = run()
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]
    settings = tmp_path / "learnstream" / "core" / "settings.py"
    settings.write_text(
        settings.read_text(encoding="utf-8") + "\nimport learnstream.cli  # noqa: E402\n",
        encoding="utf-8",
    )
    broken = run()
    assert broken.returncode != 0
    assert "the core (learnstream.core) depends on no stage, runtime or command BROKEN" in (
        broken.stdout
    )
