"""Dead letters: what could not be accepted, kept whole with the reason."""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import Field

from schemas.base import Model, utcnow


class DeadLetter(Model):
    """An input that failed, with its original bytes (base64) and where it came from."""

    original_b64: str = Field(description="The original value bytes, base64.")
    original_key_b64: str | None = None
    topic: str | None = Field(default=None, description="Topic it was read from, if any.")
    partition: int | None = None
    offset: int | None = None
    source: str | None = None
    event_type: str | None = None
    event_id: str | None = Field(default=None, description="The id it was given, if any.")
    stage: str = Field(description="Where it failed: sdk, tailer, gateway, score, ...")
    error: str = Field(min_length=1)
    error_kind: str = "invalid"
    original_size: int | None = Field(
        default=None, ge=0, description="Set when only the head of a huge original was kept."
    )
    file: str | None = None
    line_number: int | None = Field(default=None, ge=1)
    failed_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def from_bytes(
        cls, raw: bytes | str, *, key: bytes | str | None = None, **fields: object
    ) -> DeadLetter:
        """Build a dead letter around raw value (and key) bytes."""
        raw_b = raw.encode() if isinstance(raw, str) else raw
        key_b = key.encode() if isinstance(key, str) else key
        return cls(
            original_b64=base64.b64encode(raw_b).decode(),
            original_key_b64=base64.b64encode(key_b).decode() if key_b is not None else None,
            **fields,
        )

    def original(self) -> bytes:
        """The original value bytes."""
        return base64.b64decode(self.original_b64)
