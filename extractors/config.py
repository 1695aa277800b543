"""Settings of the pattern-extraction stage (``LEARNSTREAM_EXTRACT__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ExtractSettings(BaseModel):
    """Pattern extraction: LLM endpoint, heuristic fallback, merge, dataset."""

    model_config = ConfigDict(extra="forbid")
