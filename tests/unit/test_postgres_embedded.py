"""Embedded PostgreSQL start-up as root: pgserver's system user, and a clear line when it fails."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from learnstream import postgres
from learnstream.core.errors import ServiceUnavailableError


def _no_user(monkeypatch: pytest.MonkeyPatch, created: Path) -> None:
    real = pwd.getpwnam

    def getpwnam(name: str) -> pwd.struct_passwd:
        if name == postgres.PGSERVER_SYSTEM_USER and not created.exists():
            raise KeyError(name)
        return real("root")

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)


def test_useradd_is_found_outside_a_trimmed_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root process whose PATH lacks sbin (as in cron or a test's env) still creates the user."""
    created = tmp_path / "created"
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    fake = sbin / "useradd"
    fake.write_text(f'#!/bin/sh\necho "$@" > {created}\n')
    fake.chmod(0o755)
    _no_user(monkeypatch, created)
    monkeypatch.setattr(postgres, "_SBIN", (str(sbin),))
    postgres._prepare_root_user({"PATH": "/usr/bin:/bin"})
    assert created.read_text().split() == ["-s", "/bin/bash", postgres.PGSERVER_SYSTEM_USER]


def test_missing_useradd_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_user(monkeypatch, tmp_path / "never")
    monkeypatch.setattr(postgres, "_SBIN", (str(tmp_path / "none"),))
    with pytest.raises(ServiceUnavailableError) as err:
        postgres._prepare_root_user({"PATH": str(tmp_path)})
    text = str(err.value)
    assert "useradd" in text and "LEARNSTREAM_POSTGRES__URL" in text and "\n" not in text


def test_failing_useradd_reports_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    script = "#!/bin/sh\necho 'useradd: cannot lock /etc/passwd' >&2\nexit 1\n"
    (sbin / "useradd").write_text(script)
    (sbin / "useradd").chmod(0o755)
    _no_user(monkeypatch, tmp_path / "never")
    monkeypatch.setattr(postgres, "_SBIN", (str(sbin),))
    with pytest.raises(ServiceUnavailableError, match="cannot lock /etc/passwd"):
        postgres._prepare_root_user({"PATH": ""})


def test_existing_user_needs_no_useradd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    created = tmp_path / "created"
    created.touch()  # the user "exists"
    _no_user(monkeypatch, created)
    monkeypatch.setattr(postgres, "_SBIN", ())
    postgres._prepare_root_user({"PATH": ""})  # no useradd anywhere, and no error
