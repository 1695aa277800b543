"""The adapter store: numbered adapter versions per base model and which one is active.

Layout under the adapter store folder (``LEARNSTREAM_TRAINING__REGISTRY_DIR``, else
``<data dir>/adapters``)::

    <slug of base model>/
        manifest.json          active version, activation stack and history
        v0001/                 adapter_model.safetensors, adapter_config.json,
                               training_config.json, metrics.json, lineage.json,
                               dataset.jsonl (the snapshot), decision.json
        jobs/<trigger>.json    one record per training trigger (running / registered / done)
        runs/<trigger>/        scratch space of a running job
        .job.lock  .manifest.lock

Writes are crash-safe: a version folder is filled under a hidden staging name and renamed into
place, so it is complete or absent; manifest and job records are written to a temp file,
fsynced and ``os.replace``d. A candidate is registered before it is activated, so a crash in
between leaves it present but not active and the manifest still names the previous version.
No torch import here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from schemas.base import utcnow
from schemas.training import TrainingResult

if TYPE_CHECKING:
    from learnstream.core.settings import Settings

log = logging.getLogger("learnstream.trainers.adapters")

MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Files of a trainer's output folder that are not part of the adapter.
_SKIP_FILES = frozenset({"trainer", "README.md"})

JobState = Literal["running", "registered", "done"]


class AdapterStoreError(Exception):
    """An adapter store operation that cannot be done (unknown version, nothing to roll back to)."""


def slugify(base_model: str) -> str:
    """A folder name for a base model: ``Qwen/Qwen2.5-0.5B`` -> ``qwen--qwen2.5-0.5b``.

    Long names are cut and get a short hash so they stay unique.
    """
    text = base_model.strip().strip("/").lower().replace("/", "--")
    text = re.sub(r"[^a-z0-9._-]+", "-", text).strip("-.") or "model"
    if len(text) > 80:
        digest = hashlib.sha256(base_model.encode()).hexdigest()[:10]
        text = f"{text[:69]}-{digest}"
    return text


def _file_name(key: str) -> str:
    """A safe file name for a trigger id (itself when already safe)."""
    if _SAFE_NAME.match(key):
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', key)[:60].strip('-.') or 'job'}-{digest}"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) held for the block; blocks until free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class VersionInfo:
    """One registered adapter version."""

    version: int
    path: Path
    created_at: str
    active: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """``v0001``."""
        return version_name(self.version)


@dataclass
class JobRecord:
    """The durable record of one trigger's training job."""

    trigger_id: str
    state: JobState
    attempts: int = 1
    started_at: str = ""
    updated_at: str = ""
    candidate_version: int | None = None
    compared_with: int | None = None
    """The version that was active when the candidate was evaluated (None: base model)."""
    result: dict[str, Any] | None = None

    def training_result(self) -> TrainingResult | None:
        """The stored result of a finished job."""
        return None if self.result is None else TrainingResult.model_validate(self.result)


def version_name(version: int) -> str:
    """``3`` -> ``v0003``."""
    return f"v{version:04d}"


def parse_version(text: str | int) -> int:
    """``3``, ``"3"``, ``"v3"`` or ``"v0003"`` -> 3."""
    if isinstance(text, int):
        return text
    raw = text.strip().lower().removeprefix("v")
    if not raw.isdigit():
        raise AdapterStoreError(f"not a version: {text!r} (expected e.g. 3 or v0003)")
    return int(raw)


class AdapterStore:
    """The adapter store folder of one base model."""

    def __init__(self, root: Path, base_model: str) -> None:
        self.root = Path(root)
        self.base_model = base_model
        self.slug = slugify(base_model)
        self.dir = self.root / self.slug

    @classmethod
    def for_settings(cls, settings: Settings, base_model: str | None = None) -> AdapterStore:
        """The adapter store of ``base_model`` (default: the settings' base model)."""
        return cls(settings.adapters_dir, base_model or settings.base_model)

    # --- manifest ---------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        """``<slug>/manifest.json``."""
        return self.dir / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest (an empty one when nothing was ever activated)."""
        if not self.manifest_path.exists():
            return {
                "schema_version": 1,
                "base_model": self.base_model,
                "active": None,
                "stack": [],
                "history": [],
            }
        data: dict[str, Any] = _read_json(self.manifest_path)
        if data.get("base_model") not in (None, self.base_model):
            raise AdapterStoreError(
                f"{self.dir} belongs to base model {data['base_model']!r}, not {self.base_model!r}"
            )
        return data

    def active_version(self) -> int | None:
        """The active version, or None (the bare base model)."""
        active = self.manifest().get("active")
        return None if active is None else int(active)

    def active_path(self) -> Path | None:
        """The active version's folder, or None."""
        version = self.active_version()
        return None if version is None else self.version_dir(version)

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        with file_lock(self.dir / ".manifest.lock"):
            yield

    def _write_manifest(self, data: dict[str, Any]) -> None:
        data["updated_at"] = utcnow().isoformat()
        write_json_atomic(self.manifest_path, data)

    # --- versions ---------------------------------------------------------------------------

    def version_dir(self, version: int) -> Path:
        """The folder of a version (whether or not it exists)."""
        return self.dir / version_name(version)

    def versions(self) -> list[int]:
        """Registered versions, ascending."""
        if not self.dir.exists():
            return []
        found = []
        for child in self.dir.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and child.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def show(self, version: int | None = None) -> VersionInfo:
        """One version's details (default: the active one)."""
        if version is None:
            version = self.active_version()
            if version is None:
                raise AdapterStoreError(f"no active adapter for {self.base_model}")
        path = self.version_dir(version)
        if not path.is_dir():
            raise AdapterStoreError(f"{self.base_model} has no version {version_name(version)}")

        def load(name: str) -> Any:
            file = path / name
            return _read_json(file) if file.exists() else None

        config = load("training_config.json") or {}
        return VersionInfo(
            version=version,
            path=path,
            created_at=str(config.get("created_at", "")),
            active=self.active_version() == version,
            metrics=load("metrics.json") or {},
            lineage=load("lineage.json") or {},
            config=config,
            decision=load("decision.json"),
        )

    def list_versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        return [self.show(v) for v in self.versions()]

    def register(
        self,
        adapter_dir: Path,
        *,
        metrics: Mapping[str, Any],
        lineage: Mapping[str, Any],
        config: Mapping[str, Any],
        extra_files: Mapping[str, Path] | None = None,
    ) -> int:
        """Copy a trained adapter into the next numbered version; returns the version.

        The version appears complete or not at all (staging folder + rename). It is not
        activated.
        """
        if not (adapter_dir / "adapter_config.json").exists():
            raise AdapterStoreError(f"{adapter_dir} holds no adapter (adapter_config.json missing)")
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = self.dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for item in adapter_dir.iterdir():
                if item.is_file() and item.name not in _SKIP_FILES:
                    shutil.copyfile(item, staging / item.name)
            for name, source in (extra_files or {}).items():
                shutil.copyfile(source, staging / name)
            config_data = {
                **config,
                "base_model": self.base_model,
                "created_at": utcnow().isoformat(),
            }
            for name, data in (
                ("metrics.json", dict(metrics)),
                ("lineage.json", dict(lineage)),
                ("training_config.json", config_data),
            ):
                write_json_atomic(staging / name, data)
            for item in staging.iterdir():
                with item.open("rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
            with self._manifest_lock():
                version = (max(self.versions(), default=0)) + 1
                target = self.version_dir(version)
                os.rename(staging, target)
                _fsync_dir(self.dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("registered %s %s", self.base_model, version_name(version))
        return version

    def record_decision(self, version: int, decision: Mapping[str, Any]) -> None:
        """Store the promotion decision of a version (decision.json)."""
        write_json_atomic(self.version_dir(version) / "decision.json", dict(decision))

    def activate(self, version: int, reason: str = "manual") -> int | None:
        """Make ``version`` active (atomic manifest replace); returns the previous active."""
        if not self.version_dir(version).is_dir():
            raise AdapterStoreError(f"{self.base_model} has no version {version_name(version)}")
        with self._manifest_lock():
            data = self.manifest()
            previous = data.get("active")
            stack: list[int] = list(data.get("stack", []))
            if previous != version:
                stack.append(version)
            self._switch(
                data, "activate", active=version, stack=stack, previous=previous, reason=reason
            )
        log.info(
            "activated %s %s (was %s)",
            self.base_model,
            version_name(version),
            "none" if previous is None else version_name(previous),
        )
        return None if previous is None else int(previous)

    def _switch(
        self,
        data: dict[str, Any],
        action: str,
        *,
        active: int | None,
        stack: list[int],
        previous: Any,
        reason: str,
    ) -> None:
        """Write the manifest with ``active`` and ``stack``, the change in its history."""
        data.update(active=active, stack=stack, base_model=self.base_model)
        data.setdefault("history", []).append(
            {
                "action": action,
                "version": active,
                "previous": previous,
                "reason": reason,
                "at": utcnow().isoformat(),
            }
        )
        self._write_manifest(data)

    def rollback(self, reason: str = "manual rollback") -> int | None:
        """Re-activate the version active before the current one; returns the new active.

        Repeated rollbacks walk further back; past the first activation the bare base model
        (None) is active. Raises AdapterStoreError when nothing is active.
        """
        with self._manifest_lock():
            data = self.manifest()
            current = data.get("active")
            if current is None:
                raise AdapterStoreError(
                    f"nothing to roll back: no active adapter for {self.base_model}"
                )
            stack: list[int] = list(data.get("stack", []))
            while stack and stack[-1] == current:
                stack.pop()
            # Skip versions whose folders were removed by hand.
            while stack and not self.version_dir(stack[-1]).is_dir():
                stack.pop()
            new = stack[-1] if stack else None
            self._switch(data, "rollback", active=new, stack=stack, previous=current, reason=reason)
        log.info(
            "rolled back %s to %s",
            self.base_model,
            "the base model" if new is None else version_name(new),
        )
        return new

    # --- jobs -------------------------------------------------------------------------------

    def job_path(self, trigger_id: str) -> Path:
        """``<slug>/jobs/<trigger id>.json``."""
        return self.dir / "jobs" / f"{_file_name(trigger_id)}.json"

    def read_job(self, trigger_id: str) -> JobRecord | None:
        """The job record of a trigger, or None if it never ran here."""
        path = self.job_path(trigger_id)
        if not path.exists():
            return None
        data = _read_json(path)
        return JobRecord(**data)

    def write_job(self, record: JobRecord) -> None:
        """Store a job record atomically."""
        record.updated_at = utcnow().isoformat()
        write_json_atomic(self.job_path(record.trigger_id), record.__dict__)

    @contextlib.contextmanager
    def job_lock(self) -> Iterator[None]:
        """Held while a job runs: one training job at a time per base model (across processes)."""
        with file_lock(self.dir / ".job.lock"):
            yield

    def run_dir(self, trigger_id: str) -> Path:
        """Scratch folder of a trigger's job."""
        return self.dir / "runs" / _file_name(trigger_id)
