"""Helpers shared by training and evaluation: device, precision, loss mask and tokenization.

Imports torch/transformers; import this module only where a model is used.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from learnstream.core.settings import TrainingSettings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from trainers.data import Messages

log = logging.getLogger("learnstream.trainers")

IGNORE_INDEX = -100


def resolve_device(settings: TrainingSettings) -> Literal["cpu", "cuda"]:
    """``cuda`` when asked for or (auto) available, else ``cpu``; asking for a missing GPU fails."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("LEARNSTREAM_TRAINING__DEVICE=cuda but no CUDA device is available")
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def resolve_bf16(settings: TrainingSettings, device: str) -> bool:
    """Whether to use bf16: never on cpu; auto = when the GPU supports it."""
    if device != "cuda":
        return False
    if settings.bf16 == "auto":
        return bool(torch.cuda.is_bf16_supported())
    return bool(settings.bf16)


def quiet_progress_bars() -> None:
    """Turn off the hub libraries' own progress bars when stderr is not a terminal."""
    if sys.stderr.isatty():
        return
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (eos when it has none) and a chat template."""
    from transformers import AutoTokenizer

    if (
        base_model.startswith(("/", "./", "../", "~"))
        and not Path(base_model).expanduser().exists()
    ):
        raise FileNotFoundError(f"base model folder {base_model} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(
            f"the tokenizer of {base_model!r} has no chat template; "
            "conversational SFT needs an instruct/chat base model"
        )
    return tokenizer


def load_model(base_model: str, device: str, bf16: bool) -> Any:
    """The base causal LM on ``device`` (bf16 weights when ``bf16``, else float32)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return model.to(device)


@dataclass(frozen=True)
class LossMask:
    """Which tokens carry the loss, as resolved for one tokenizer."""

    loss_on: Literal["assistant", "all"]
    chat_template: str | None
    """Template to render with (trl's training variant), or None for the tokenizer's own."""


def resolve_loss_mask(
    tokenizer: PreTrainedTokenizerBase, loss_on: Literal["assistant", "all"]
) -> LossMask:
    """Assistant-only loss when the chat template supports it (has or can be patched with
    ``{% generation %}`` markers, as trl does); otherwise all tokens, with a warning."""
    if loss_on == "all":
        return LossMask("all", None)
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        log.warning(
            "the chat template has no {%% generation %%} markers and trl cannot patch it: "
            "training and evaluating on all tokens instead of the assistant's"
        )
        return LossMask("all", None)
    return LossMask("assistant", patched)


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    mask: LossMask,
    max_length: int,
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per conversation, the way trl's SFTTrainer builds them.

    Rendered with the chat template, truncated to ``max_length`` (keeping the start); labels
    are the input ids on loss tokens and -100 elsewhere. Conversations left without a loss
    token are dropped.
    """
    assistant = mask.loss_on == "assistant"
    out: list[tuple[list[int], list[int]]] = []
    for messages in conversations:
        encoded: Any = tokenizer.apply_chat_template(
            list(messages),
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=assistant,
            chat_template=mask.chat_template,
        )
        ids = list(encoded["input_ids"])[:max_length]
        if assistant:
            flags = list(encoded["assistant_masks"])[:max_length]
            labels = [t if f else IGNORE_INDEX for t, f in zip(ids, flags, strict=True)]
        else:
            labels = list(ids)
        if any(label != IGNORE_INDEX for label in labels[1:]):
            out.append((ids, labels))
    return out
