"""Settings of the training loop (``LEARNSTREAM_TRAINING__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TrainingSettings(BaseModel):
    """LoRA fine-tuning, evaluation, promotion and hot-swap."""

    model_config = ConfigDict(extra="forbid")
