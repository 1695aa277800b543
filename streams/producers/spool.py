"""A bounded, append-only on-disk queue of records that survives restarts.

Records are JSON lines (key and value base64) in ``spool.log``; ``spool.pos`` holds the byte
offset of the first unsent record, replaced atomically. A torn last line from a crash is cut
off on open. When everything is sent the files are reset. One process per spool directory
(enforced with an exclusive lock).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from learnstream.core.errors import ResourceBusyError


class SpoolLockedError(ResourceBusyError):
    """Another process is using this spool directory."""


@dataclass(slots=True)
class SpoolRecord:
    """One Kafka record waiting to be (re)sent."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    event_id: str
    seq: int
    source: str = ""
    size: int = field(default=0, compare=False)

    def encode(self) -> bytes:
        """The record as one JSON line."""
        return (
            json.dumps(
                {
                    "t": self.topic,
                    "v": base64.b64encode(self.value).decode(),
                    "k": None if self.key is None else base64.b64encode(self.key).decode(),
                    "h": [[k, base64.b64encode(v).decode()] for k, v in self.headers],
                    "id": self.event_id,
                    "seq": self.seq,
                    "src": self.source,
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
        )

    @classmethod
    def decode(cls, line: bytes) -> SpoolRecord:
        """Parse one JSON line written by `encode`."""
        d = json.loads(line)
        return cls(
            topic=d["t"],
            value=base64.b64decode(d["v"]),
            key=None if d["k"] is None else base64.b64decode(d["k"]),
            headers=[(k, base64.b64decode(v)) for k, v in d["h"]],
            event_id=d["id"],
            seq=d["seq"],
            source=d.get("src", ""),
            size=len(line),
        )


class Spool:
    """Bounded FIFO of `SpoolRecord` on disk; not thread-safe (one owner thread)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(directory / "spool.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLockedError(
                f"spool {directory} is in use by another process; give each producer its own "
                "spool name"
            ) from None
        self._log_path = directory / "spool.log"
        self._pos_path = directory / "spool.pos"
        self._pos = self._read_pos()
        self._end = self._repair_tail()
        self._count = self._count_unsent()
        # Unbuffered: a write the disk refuses fails here, whole, not at a later flush.
        self._log: IO[bytes] = open(self._log_path, "ab", buffering=0)  # noqa: SIM115
        self._dirty = False
        self.last_error: str | None = None  # why the last append or sync failed
        self.disk_refused = False  # the last append failed on the disk, not on the cap

    def _read_pos(self) -> int:
        try:
            return int(self._pos_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _repair_tail(self) -> int:
        """Cut a torn last line (crash mid-append); returns the end offset."""
        if not self._log_path.exists():
            self._log_path.touch()
            return 0
        data = self._log_path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good != len(data):
            with open(self._log_path, "r+b") as f:
                f.truncate(good)
        self._pos = min(self._pos, good)
        return good

    def _count_unsent(self) -> int:
        with open(self._log_path, "rb") as f:
            f.seek(self._pos)
            return sum(1 for _ in f)

    def __len__(self) -> int:
        return self._count

    @property
    def unsent_bytes(self) -> int:
        """Bytes of records not yet sent."""
        return self._end - self._pos

    def append(self, record: SpoolRecord) -> bool:
        """Append one record; False (and nothing written) when the spool is full: its size
        cap, or a write the disk refused (`last_error` says which)."""
        line = record.encode()
        if self.unsent_bytes + len(line) > self.max_bytes:
            self.last_error = f"the spool is at its cap of {self.max_bytes} bytes"
            self.disk_refused = False
            return False
        try:
            written = self._log.write(line)
            if written != len(line):  # the disk took only part of it
                raise OSError(errno.ENOSPC, "No space left on device (a short write)")
        except OSError as exc:  # a full disk or a file size limit: cut what got half-written
            self.last_error = f"the disk refused the spool's write ({exc.strerror or exc})"
            self.disk_refused = True
            self._truncate_to_end()
            return False
        self.disk_refused = False
        self._end += len(line)
        self._count += 1
        self._dirty = True
        return True

    def _truncate_to_end(self) -> None:
        self._log.close()
        with contextlib.suppress(OSError):  # else a torn last line is cut on the next open
            os.truncate(self._log_path, self._end)
        self._log = open(self._log_path, "ab", buffering=0)  # noqa: SIM115

    def sync(self) -> None:
        """Make appended records durable (a refused fsync is retried at the next sync)."""
        if self._dirty:
            try:
                os.fsync(self._log.fileno())
            except OSError as exc:
                self.last_error = f"the disk refused the spool's fsync ({exc.strerror or exc})"
                return
            self._dirty = False

    def peek(self, max_records: int) -> list[tuple[int, SpoolRecord]]:
        """Up to ``max_records`` unsent records, oldest first, each with its end offset."""
        out: list[tuple[int, SpoolRecord]] = []
        with open(self._log_path, "rb") as f:
            f.seek(self._pos)
            offset = self._pos
            for line in f:
                if len(out) >= max_records or offset >= self._end:
                    break
                offset += len(line)
                out.append((offset, SpoolRecord.decode(line)))
        return out

    def advance(self, offset: int, count: int) -> None:
        """Mark records up to byte ``offset`` as sent (``count`` of them); reset when empty."""
        self._pos = offset
        self._count -= count
        if self._pos >= self._end:
            self._reset()
            return
        tmp = self._pos_path.with_suffix(".tmp")
        try:
            tmp.write_text(str(self._pos))
            os.replace(tmp, self._pos_path)
        except OSError as exc:  # a full disk: the sent records may be resent after a restart
            self.last_error = f"the disk refused the spool's position ({exc.strerror or exc})"

    def _reset(self) -> None:
        self._log.close()
        with open(self._log_path, "wb"):
            pass
        self._pos_path.unlink(missing_ok=True)
        self._log = open(self._log_path, "ab", buffering=0)  # noqa: SIM115
        self._pos = self._end = self._count = 0
        self._dirty = False

    def close(self) -> None:
        """Sync and release the directory."""
        self.sync()
        self._log.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
