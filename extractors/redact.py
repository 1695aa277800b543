"""Secret redaction of candidates and patterns: `schemas.redact` (one implementation for the
SDK, the score stage and the extractors), under the name the extractors have always used."""

from schemas.redact import (
    MARK,
    may_hold_secret,
    redact,
    redact_candidate,
    redact_data,
    redact_interaction,
    redact_json,
    redact_pattern,
    redact_with_counts,
)

__all__ = [
    "MARK",
    "may_hold_secret",
    "redact",
    "redact_candidate",
    "redact_data",
    "redact_interaction",
    "redact_json",
    "redact_pattern",
    "redact_with_counts",
]
