"""Deterministic event ids for events read from files.

A file's identity is the hash of its first line, so a rotated file keeps its identity, a new or
truncated-and-rewritten file gets a new one, and an archived copy read for backfill has the
same identity as the live file had. ``event_id = uuid5(source, identity, byte offset of line)``:
re-reading a file, from any reader, yields the same ids.
"""

from __future__ import annotations

import hashlib
import uuid

NAMESPACE = uuid.UUID("6f1c9c2e-6a58-4d7e-9a55-1e4c2b9f7a10")
IDENTITY_BYTES = 4096


def file_identity(first_line: bytes) -> str:
    """Identity of a file from its first line (at most 4 KiB of it)."""
    return hashlib.sha256(first_line[:IDENTITY_BYTES].rstrip(b"\r\n")).hexdigest()[:32]


def derive_event_id(source: str, identity: str, offset: int) -> str:
    """The event id of the line starting at byte ``offset`` of the file ``identity``."""
    return str(uuid.uuid5(NAMESPACE, f"{source}:{identity}:{offset}"))
