"""Dead letters: what could not be accepted, kept whole with the reason."""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import Field

from schemas.base import Model, utcnow

BROKER_MESSAGE_MAX_BYTES = 1_000_000
"""What a default Kafka producer and broker accept per record (``message.max.bytes``)."""
ENVELOPE_MAX_BYTES = 64 * 1024
"""Room for everything of a dead letter but its original: reason, key, fields."""
DEAD_LETTER_MAX_BYTES = (BROKER_MESSAGE_MAX_BYTES - ENVELOPE_MAX_BYTES) * 3 // 4
"""The most of an original a dead letter keeps (its head): base64 makes 4 bytes of 3, so the
letter stays under ``BROKER_MESSAGE_MAX_BYTES`` whatever the input."""
MAX_REASON_CHARS = 4000
MAX_KEY_BYTES = 4096


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
        default=None,
        ge=0,
        description="The original's size in bytes; larger than the kept bytes when only its "
        "head was kept (over DEAD_LETTER_MAX_BYTES).",
    )
    file: str | None = None
    line_number: int | None = Field(default=None, ge=1)
    failed_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def from_bytes(
        cls, raw: bytes | str, *, key: bytes | str | None = None, **fields: object
    ) -> DeadLetter:
        """Build a dead letter around raw value (and key) bytes, of any size: it keeps at most
        `DEAD_LETTER_MAX_BYTES` of the value (its head) and records the original size, so
        the letter always fits in one broker record."""
        raw_b = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
        key_b = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
        size = fields.pop("original_size", None)
        size = len(raw_b) if not isinstance(size, int) else max(size, len(raw_b))
        error = str(fields.pop("error", "") or "unknown error")
        note = ""
        if len(raw_b) > DEAD_LETTER_MAX_BYTES:
            note = f" (this dead letter keeps the first {DEAD_LETTER_MAX_BYTES} of {size} bytes)"
        if len(error) + len(note) > MAX_REASON_CHARS:
            error = error[: MAX_REASON_CHARS - len(note) - 3] + "..."
        error += note
        return cls(
            original_b64=base64.b64encode(raw_b[:DEAD_LETTER_MAX_BYTES]).decode(),
            original_key_b64=(
                base64.b64encode(key_b[:MAX_KEY_BYTES]).decode() if key_b is not None else None
            ),
            original_size=size,
            error=error,
            **fields,
        )

    def original(self) -> bytes:
        """The original value bytes."""
        return base64.b64decode(self.original_b64)
