"""File tailers: `learnstream produce tail` follows the tools' JSONL files like ``tail -F``.

One `FileTailer` per (source, path); `run_tailers` polls them all in one thread of one process.

- The file need not exist yet. **Rotation** (the path now names another file): the old file is
  read to its end, and kept open until it has been quiet for a grace period (a writer that has
  not reopened yet may still append to it); then the new file is read from byte 0. A file that
  was only deleted or renamed away keeps being read until a new one appears at the path.
- **Truncation** (the file is shorter than the position, or its first line changed, as after
  ``copytruncate``): reading starts over at byte 0 of the new content.
- Only complete lines are sent; a partial last line waits for its newline. Blank lines are
  skipped; malformed or invalid lines go to ``telemetry.dlq`` with the reason, line number and
  raw text. Reads are bounded (`CHUNK_LINES` lines or `CHUNK_BYTES` bytes per poll).
- Event ids come from `streams.producers.ids`: source + identity of the file (hash of its first
  line) + byte offset of the line, exactly like ``learnstream produce send FILE``; a line that
  carries its own ``event_id`` keeps it.
- The position is checkpointed atomically under ``<data dir>/tailers/`` only after
  `TelemetryProducer.flush` returned 0 (every event read so far delivered or durably spooled).
  A restart resumes from the checkpoint if the file there still has the same identity; if the
  file was rotated while nothing was running, the rotated file is found by inode in the same
  directory and finished first. Delivery is at-least-once: lines read after the last checkpoint
  are re-sent after a crash, with the same event ids, and downstream upserts drop the copies.

One `TelemetryProducer` per source (spool ``tailer-<source>``, stage ``tailer``): a process
tailing several files of one source shares one producer, and a spool left by an earlier run is
found again by whichever tail process next handles that source, even if the set of files
changes. Two processes tailing the same source are refused by the spool lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from prometheus_client import CollectorRegistry

from learnstream.core.settings import Settings
from learnstream.core.signals import process_lifecycle
from learnstream.core.summary import Summary
from schemas.base import Source, SourceEvent
from schemas.dlq import DEAD_LETTER_MAX_BYTES
from schemas.errors import EventError
from schemas.parsing import parse_event, parse_source
from streams.producers.ids import IDENTITY_BYTES, derive_event_id, file_identity

log = logging.getLogger("learnstream.tailer")

CHUNK_LINES = 1000
CHUNK_BYTES = 1024 * 1024
ROTATE_GRACE_S = 1.0
DLQ_PREFIX_BYTES = DEAD_LETTER_MAX_BYTES  # an oversized line keeps its head (schemas.dlq)
CHECKPOINT_VERSION = 1
STAGE = "tailer"


class EventSink(Protocol):
    """What a tailer needs from a producer (`TelemetryProducer` implements it)."""

    def emit(self, event: SourceEvent) -> str:
        """Queue one event; returns its id."""
        ...

    def dead_letter(self, raw: bytes, reason: str, **fields: Any) -> None:
        """Send input that could not be accepted to the DLQ."""
        ...


class FlushingSink(EventSink, Protocol):
    """An `EventSink` that can wait until everything queued is delivered or spooled."""

    def flush(self, timeout: float | None = None) -> int:
        """Returns how many events are still neither delivered nor spooled."""
        ...


@dataclass
class TailerStats:
    """What one tailer did since it started."""

    source: str
    path: str
    sent: int = 0
    invalid: int = 0
    blank: int = 0
    rotations: int = 0
    truncations: int = 0
    position: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """Where a tailer is: the file (identity, device, inode) and the next byte and line."""

    source: str
    path: str
    identity: str | None
    dev: int
    ino: int
    position: int
    line_number: int

    def to_json(self) -> bytes:
        """The checkpoint file's content."""
        data = {
            "version": CHECKPOINT_VERSION,
            **asdict(self),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        return json.dumps(data, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        """Parse a checkpoint file; raises ValueError (or KeyError/TypeError) if it is bad."""
        d = json.loads(raw)
        if d.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"unknown checkpoint version {d.get('version')!r}")
        return cls(
            source=str(d["source"]),
            path=str(d["path"]),
            identity=None if d["identity"] is None else str(d["identity"]),
            dev=int(d["dev"]),
            ino=int(d["ino"]),
            position=int(d["position"]),
            line_number=int(d["line_number"]),
        )


def checkpoint_path(settings: Settings, source: str, path: Path) -> Path:
    """The checkpoint file of one (source, path): ``<data dir>/tailers/<source>-<hash>.json``."""
    absolute = os.path.abspath(path)
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:16]
    return settings.data_dir / "tailers" / f"{source}-{digest}.json"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync it, rename it over ``path`` and fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_identity(fd: int) -> str | None:
    """The identity of an open file (hash of its first line), None until that line is complete.

    Equals ``file_identity(first line)`` as `send_lines` computes it; a first line longer than
    `IDENTITY_BYTES` is identified by its first `IDENTITY_BYTES` bytes as soon as they exist.
    """
    head = os.pread(fd, IDENTITY_BYTES + 2, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        return file_identity(head[:nl].rstrip(b"\r\n"))
    if len(head) == IDENTITY_BYTES + 2:
        return file_identity(head[:IDENTITY_BYTES])
    return None


@dataclass
class _LongLine:
    """A line longer than the event size limit, being skipped to its end."""

    offset: int
    number: int
    prefix: bytes
    scanned_to: int


class FileTailer:
    """Follows one JSONL file of one source; `run_tailers` drives it.

    `start` opens the file (resuming from the checkpoint unless ``from_start``), `poll` reads
    one bounded chunk of complete lines and handles rotation and truncation, `snapshot` and
    `save_checkpoint` persist the position (call them only once the producer has flushed).
    """

    def __init__(
        self,
        source: Source | str,
        path: Path | str,
        producer: EventSink,
        settings: Settings,
        *,
        from_start: bool = False,
        rotate_grace: float = ROTATE_GRACE_S,
        chunk_lines: int = CHUNK_LINES,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.source = parse_source(str(source))
        self.path = Path(path)
        self.producer = producer
        self.settings = settings
        self.from_start = from_start
        self.rotate_grace = rotate_grace
        self.max_bytes = settings.max_event_bytes
        self.chunk_lines = max(1, chunk_lines)
        # A full chunk without a newline then always means an oversized line.
        self.chunk_bytes = max(chunk_bytes, self.max_bytes + 2)
        self.checkpoint_file = checkpoint_path(settings, self.source.value, self.path)
        self.stats = TailerStats(self.source.value, str(self.path))
        self.dirty = False  # position moved since the last saved checkpoint
        self._fh: IO[bytes] | None = None
        self._dev = 0
        self._ino = 0
        self._identity: str | None = None
        self._position = 0
        self._line_number = 0
        self._long: _LongLine | None = None
        self._rotation_seen = False
        self._old_size = -1
        self._old_changed_at = 0.0
        self._error_logged: str | None = None
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Byte offset of the first line not read yet, in the file being read."""
        return self._position

    def start(self) -> None:
        """Open the file: from the checkpoint if it still applies, else from byte 0.

        If that fails (e.g. permission denied), it is logged and `poll` retries it.
        """
        try:
            self._start()
            self._started = True
        except OSError as exc:
            log.warning(
                "tailing %s %s: %s: %s; retrying",
                self.source.value,
                self.path,
                type(exc).__name__,
                exc,
            )
            self.close()

    def _start(self) -> None:
        what = self.source.value, self.path
        if self.from_start:
            if self._open_path():
                log.info("tailing %s %s: --from-start, replaying from byte 0", *what)
            else:
                log.info("tailing %s %s: --from-start; the file does not exist yet", *what)
            return
        cp = self._load_checkpoint()
        if cp is not None and self._resume(cp):
            return
        if self._open_path():
            log.info("tailing %s %s: no checkpoint, reading from byte 0", *what)
        else:
            log.info("tailing %s %s: the file does not exist yet, waiting for it", *what)

    def close(self) -> None:
        """Close the file (the checkpoint is left as last saved)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def snapshot(self) -> Checkpoint:
        """The current position, to save once everything read so far is flushed."""
        return Checkpoint(
            source=self.source.value,
            path=os.path.abspath(self.path),
            identity=self._identity,
            dev=self._dev,
            ino=self._ino,
            position=self._position,
            line_number=self._line_number,
        )

    def save_checkpoint(self, cp: Checkpoint) -> None:
        """Persist ``cp`` atomically; clears `dirty` if nothing was read since ``cp``."""
        write_atomically(self.checkpoint_file, cp.to_json())
        if cp == self.snapshot():
            self.dirty = False

    # --- polling ------------------------------------------------------------------------------

    def poll(self) -> bool:
        """Handle rotation/truncation and read one bounded chunk; True if more is waiting."""
        try:
            more = self._poll()
        except OSError as exc:
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self._error_logged:
                log.warning("tailing %s %s: %s; retrying", self.source.value, self.path, msg)
                self._error_logged = msg
            return False
        self._error_logged = None
        self.stats.position = self._position
        return more

    def _poll(self) -> bool:
        if not self._started:  # `start` failed: retry it, checkpoint included
            self._start()
            self._started = True
            if self._fh is None:
                return False
        if self._fh is None:
            if not self._open_path():
                return False
            log.info("%s %s appeared; reading from byte 0", self.source.value, self.path)
        assert self._fh is not None
        path_st = self._stat_path()
        replaced = path_st is not None and (path_st.st_dev, path_st.st_ino) != (
            self._dev,
            self._ino,
        )
        if replaced and not self._rotation_seen:
            self._rotation_seen = True
            self._old_size = -1
            log.info(
                "%s %s was rotated; finishing the old file (at byte %d) before the new one",
                self.source.value,
                self.path,
                self._position,
            )
        elif path_st is not None and not replaced:
            self._check_truncation(path_st.st_size)
        more = self._read_chunk()
        if replaced and not more:
            size = os.fstat(self._fh.fileno()).st_size
            now = time.monotonic()
            if size != self._old_size:
                self._old_size, self._old_changed_at = size, now
            elif now - self._old_changed_at >= self.rotate_grace:
                self._finish_rotated()
                return True
        return more

    def _stat_path(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _check_truncation(self, size: int) -> None:
        assert self._fh is not None
        if self._position == 0 and self._long is None:
            return
        if size < self._position:
            why = f"size {size} < position {self._position}"
        elif self._identity is not None and read_identity(self._fh.fileno()) != self._identity:
            why = "its first line changed"
        else:
            return
        self.stats.truncations += 1
        log.warning(
            "%s %s was truncated (%s); reading from byte 0", self.source.value, self.path, why
        )
        self._reset_position()

    def _reset_position(self) -> None:
        self._identity = None
        self._position = 0
        self._line_number = 0
        self._long = None
        self.dirty = True

    def _finish_rotated(self) -> None:
        """The old file is quiet: send a last unterminated line, then switch to the new file."""
        assert self._fh is not None
        fd = self._fh.fileno()
        while self._read_chunk():  # anything written since the last poll
            pass
        if self._long is not None:
            end = os.fstat(fd).st_size
            self._oversized(self._long.prefix, self._long.offset, self._long.number, end)
            self._line_number = self._long.number
            self._long = None
            self._position = end
        else:
            rest = os.pread(fd, self.chunk_bytes, self._position)
            pieces = rest.split(b"\n")
            if not pieces[-1]:
                pieces.pop()
            offset = self._position
            for piece in pieces:
                self._line_number += 1
                self._handle_line(piece, offset, self._line_number)
                offset += len(piece) + 1
            self._position += len(rest)
        log.info(
            "%s %s: finished the rotated file at byte %d (line %d); "
            "following the new file from byte 0",
            self.source.value,
            self.path,
            self._position,
            self._line_number,
        )
        self.stats.rotations += 1
        self.close()
        self._rotation_seen = False
        self._reset_position()
        self._open_path()

    def _read_chunk(self) -> bool:
        """Handle up to `chunk_lines` complete lines; True if the chunk limit was hit."""
        assert self._fh is not None
        fd = self._fh.fileno()
        if self._long is not None:
            return self._skip_long(fd)
        base = self._position
        data = os.pread(fd, self.chunk_bytes, base)
        start = 0
        count = 0
        while count < self.chunk_lines:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            self._line_number += 1
            self._handle_line(data[start:nl], base + start, self._line_number)
            start = nl + 1
            self._position = base + start
            count += 1
        if count:
            self.dirty = True
        if count == self.chunk_lines:
            return True
        if start == 0 and len(data) == self.chunk_bytes:  # no newline in a whole chunk
            prefix = os.pread(fd, DLQ_PREFIX_BYTES, base)
            self._long = _LongLine(base, self._line_number + 1, prefix, base)
            if base == 0:
                self._identity = file_identity(data[:IDENTITY_BYTES])
            return self._skip_long(fd)
        return len(data) == self.chunk_bytes

    def _skip_long(self, fd: int) -> bool:
        long = self._long
        assert long is not None
        data = os.pread(fd, self.chunk_bytes, long.scanned_to)
        nl = data.find(b"\n")
        if nl < 0:
            long.scanned_to += len(data)
            return len(data) == self.chunk_bytes
        end = long.scanned_to + nl
        self._oversized(long.prefix, long.offset, long.number, end)
        self._line_number = long.number
        self._position = end + 1
        self._long = None
        self.dirty = True
        return True

    def _oversized(self, prefix: bytes, offset: int, number: int, end: int) -> None:
        size = end - offset
        prefix = prefix[:size]  # a prefix read ahead may run past the line's end
        reason = (
            f"{self.path} line {number}: event is {size} bytes, over the limit of "
            f"{self.max_bytes} bytes (LEARNSTREAM_MAX_EVENT_BYTES); "
            f"only its first {len(prefix)} bytes are kept"
        )
        self._dead_letter(prefix, reason, number, None, "oversized")

    def _handle_line(self, raw: bytes, offset: int, number: int) -> None:
        """Validate one complete line (without its newline) and emit or dead-letter it."""
        line = raw.rstrip(b"\r\n")
        if offset == 0:
            self._identity = file_identity(line)
        if not line.strip():
            self.stats.blank += 1
            return
        if len(line) > self.max_bytes:
            self._oversized(line[:DLQ_PREFIX_BYTES], offset, number, offset + len(line))
            return
        try:
            event = parse_event(self.source, line, max_bytes=self.max_bytes)
        except EventError as exc:
            reason = f"{self.path} line {number}: {exc.reason}"
            self._dead_letter(line, reason, number, exc.event_type, exc.kind)
            return
        if event.event_id is None:
            assert self._identity is not None
            event_id = derive_event_id(self.source.value, self._identity, offset)
            event = event.model_copy(update={"event_id": event_id})
        self.producer.emit(event)
        self.stats.sent += 1

    def _dead_letter(
        self, raw: bytes, reason: str, number: int, event_type: str | None, kind: str
    ) -> None:
        log.warning("%s: dead-lettered: %s", self.source.value, reason)
        self.producer.dead_letter(
            raw,
            reason,
            source=self.source.value,
            stage=STAGE,
            file=str(self.path),
            line_number=number,
            event_type=event_type,
            error_kind=kind,
        )
        self.stats.invalid += 1

    # --- opening and resuming -----------------------------------------------------------------

    def _adopt(self, fh: IO[bytes], position: int, line_number: int, identity: str | None) -> None:
        st = os.fstat(fh.fileno())
        self._fh = fh
        self._dev, self._ino = st.st_dev, st.st_ino
        self._position = position
        self._line_number = line_number
        self._identity = identity
        self._long = None
        self._rotation_seen = False

    def _open_path(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        except FileNotFoundError:
            return False
        self._adopt(fh, 0, 0, None)
        self.dirty = True
        return True

    def _load_checkpoint(self) -> Checkpoint | None:
        try:
            raw = self.checkpoint_file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Checkpoint.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "ignoring unreadable checkpoint %s (%s); reading %s from byte 0",
                self.checkpoint_file,
                exc,
                self.path,
            )
            return None

    def _resume(self, cp: Checkpoint) -> bool:
        """Resume at ``cp`` in the file at the path, or in the file it was rotated to."""
        what = self.source.value, self.path
        try:
            fh: IO[bytes] | None = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            fh = None
        if fh is not None and cp.identity is None and cp.position == 0:
            self._adopt(fh, 0, 0, None)
            log.info("tailing %s %s: resuming from the checkpoint at byte 0", *what)
            return True
        if fh is not None and cp.identity is not None and read_identity(fh.fileno()) == cp.identity:
            size = os.fstat(fh.fileno()).st_size
            if size >= cp.position:
                self._adopt(fh, cp.position, cp.line_number, cp.identity)
                log.info(
                    "tailing %s %s: resuming from the checkpoint at byte %d (line %d)",
                    *what,
                    cp.position,
                    cp.line_number,
                )
                return True
            self._adopt(fh, 0, 0, None)
            self.dirty = True
            self.stats.truncations += 1
            log.warning(
                "tailing %s %s: truncated since the checkpoint (size %d < %d); reading from byte 0",
                *what,
                size,
                cp.position,
            )
            return True
        old = self._find_rotated(cp)
        if old is not None:
            if fh is not None:
                fh.close()
            old_fh, old_path = old
            self._adopt(old_fh, cp.position, cp.line_number, cp.identity)
            log.info(
                "tailing %s %s: the checkpointed file was rotated to %s; finishing it from "
                "byte %d (line %d) before the new file",
                *what,
                old_path,
                cp.position,
                cp.line_number,
            )
            return True
        if fh is None:
            log.info(
                "tailing %s %s: the checkpointed file is gone and the path does not exist; "
                "waiting for it",
                *what,
            )
            return True  # nothing open; `poll` opens the path when it appears
        self._adopt(fh, 0, 0, None)
        self.dirty = True
        log.info("tailing %s %s: another file than at the checkpoint; reading from byte 0", *what)
        return True

    def _find_rotated(self, cp: Checkpoint) -> tuple[IO[bytes], Path] | None:
        """The checkpointed file under another name in the same folder (inode and identity)."""
        if cp.identity is None:
            return None
        folder = self.path.parent
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return None
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (cp.dev, cp.ino) or st.st_size < cp.position:
                continue
            try:
                fh = open(entry.path, "rb")  # noqa: SIM115
            except OSError:
                continue
            if read_identity(fh.fileno()) == cp.identity:
                return fh, Path(entry.path)
            fh.close()
        return None


def run_tailers(
    settings: Settings,
    specs: Sequence[tuple[Source | str, Path | str]],
    *,
    from_start: bool = False,
    poll_interval: float = 0.25,
    stop: threading.Event | None = None,
    registry: CollectorRegistry | None = None,
    rotate_grace: float = ROTATE_GRACE_S,
) -> list[TailerStats]:
    """Follow every (source, path) in this thread until SIGINT/SIGTERM or ``stop`` is set.

    After each round of reads the producers are flushed and, once every event read is
    delivered or spooled, the checkpoints are saved. On stop: a last flush and checkpoint, then
    the producers are closed. Signal handlers are installed only on the main thread. Returns
    each tailer's stats.
    """
    if not specs:
        raise ValueError("run_tailers needs at least one (source, path)")
    pairs = [(parse_source(str(s)), Path(p)) for s, p in specs]
    keys = [(s, os.path.abspath(p)) for s, p in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("the same (source, path) is given twice")
    with process_lifecycle(settings, log, stop) as stop_event:
        return _run_tailers(
            settings,
            pairs,
            stop_event,
            from_start=from_start,
            poll_interval=poll_interval,
            registry=registry,
            rotate_grace=rotate_grace,
        )


def _run_tailers(
    settings: Settings,
    pairs: list[tuple[Source, Path]],
    stop: threading.Event,
    *,
    from_start: bool,
    poll_interval: float,
    registry: CollectorRegistry | None,
    rotate_grace: float,
) -> list[TailerStats]:
    from streams.producers.sdk import TelemetryProducer

    flush_timeout = settings.producer.delivery_timeout_ms / 1000 + 5
    producers: dict[Source, TelemetryProducer] = {}
    tailers: list[FileTailer] = []
    try:
        for source, _ in pairs:
            if source not in producers:
                producers[source] = TelemetryProducer(
                    source, settings, name=f"tailer-{source.value}", registry=registry, stage=STAGE
                )
        for source, path in pairs:
            tailer = FileTailer(
                source,
                path,
                producers[source],
                settings,
                from_start=from_start,
                rotate_grace=rotate_grace,
            )
            tailers.append(tailer)
            tailer.start()
        summary = Summary(log, "tailer", settings.summary_interval_s)
        while not stop.is_set():
            more = False
            for tailer in tailers:
                more = tailer.poll() or more
            _flush_and_checkpoint(tailers, producers, flush_timeout)
            summary.set_totals(
                sent=sum(t.stats.sent for t in tailers),
                invalid=sum(t.stats.invalid for t in tailers),
                rotations=sum(t.stats.rotations for t in tailers),
            )
            summary.gauge(files=len(tailers), spooled=sum(p.spooled for p in producers.values()))
            summary.maybe_log()
            if not more:
                stop.wait(poll_interval)
    finally:
        try:
            _flush_and_checkpoint(tailers, producers, flush_timeout)
        finally:
            for producer in producers.values():
                producer.close()
            for tailer in tailers:
                tailer.close()
                log.info(
                    "stopped tailing %s %s at byte %d: %d sent, %d invalid, %d blank, "
                    "%d rotations, %d truncations",
                    tailer.source.value,
                    tailer.path,
                    tailer.position,
                    tailer.stats.sent,
                    tailer.stats.invalid,
                    tailer.stats.blank,
                    tailer.stats.rotations,
                    tailer.stats.truncations,
                )
    return [t.stats for t in tailers]


def _flush_and_checkpoint(
    tailers: list[FileTailer], producers: Mapping[Source, FlushingSink], timeout: float
) -> None:
    """Flush the producers of tailers that moved; save their checkpoints if all is safe."""
    for source, producer in producers.items():
        moved = [t for t in tailers if t.dirty and t.source is source]
        if not moved:
            continue
        snapshots = [t.snapshot() for t in moved]
        pending = producer.flush(timeout)
        if pending:
            log.warning(
                "%s: %d events neither delivered nor spooled after %.0fs; checkpoint not saved",
                source.value,
                pending,
                timeout,
            )
            continue
        for tailer, cp in zip(moved, snapshots, strict=True):
            tailer.save_checkpoint(cp)
