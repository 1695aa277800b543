"""Evaluate the base model, the active adapter and a candidate on the same eval set.

The number is the mean token loss: the summed next-token negative log-likelihood over the
loss tokens of every eval conversation divided by the number of those tokens (token-weighted,
so long answers count for what they contain). Loss tokens are the same as in training: the
assistant's replies, including their end-of-turn token, when the chat template supports it,
else every token (`trainers.hf.resolve_loss_mask`); conversations are truncated to
``max_length`` like in training. Perplexity is ``exp(loss)``.

The base model is loaded once; every adapter is attached to it by name and switched on in
turn; ``None`` means the bare base model (adapters disabled).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.config import TrainingSettings

if TYPE_CHECKING:
    from trainers.data import Messages

log = logging.getLogger("learnstream.trainers.evaluate")

_MAX_EXP = 700.0  # exp() of more overflows a float


@dataclass(frozen=True)
class EvalResult:
    """One model's numbers on the eval set."""

    loss: float
    perplexity: float
    tokens: int
    examples: int
    duration_s: float


def perplexity(loss: float) -> float:
    """``exp(loss)``, finite (capped at exp(700))."""
    return math.exp(min(loss, _MAX_EXP))


def evaluate_adapters(
    base_model: str,
    conversations: Sequence[Messages],
    adapters: Mapping[str, Path | None],
    settings: TrainingSettings | None = None,
) -> dict[str, EvalResult]:
    """Mean token loss and perplexity of each named adapter (None: the bare base model).

    All are evaluated on the same tokenized conversations. Raises ValueError when no
    conversation has a loss token, RuntimeError when a loss is not finite.
    """
    import torch

    from trainers.hf import (
        load_model,
        load_tokenizer,
        quiet_progress_bars,
        resolve_bf16,
        resolve_device,
        resolve_loss_mask,
        tokenize_examples,
    )

    settings = settings or TrainingSettings()
    quiet_progress_bars()
    device = resolve_device(settings)
    bf16 = resolve_bf16(settings, device)
    tokenizer = load_tokenizer(base_model)
    mask = resolve_loss_mask(tokenizer, settings.loss_on)
    batches = _batches(
        tokenize_examples(tokenizer, conversations, mask, settings.max_length),
        settings.batch_size,
        int(tokenizer.pad_token_id),
    )
    if not batches:
        raise ValueError("the eval set has no tokens to score")

    model: Any = load_model(base_model, device, bf16)
    named = {name: path for name, path in adapters.items() if path is not None}
    if named:
        from peft import PeftModel

        first, *rest = named.items()
        model = PeftModel.from_pretrained(model, str(first[1]), adapter_name=first[0])
        for extra_name, extra_path in rest:
            model.load_adapter(str(extra_path), adapter_name=extra_name)
    model.eval()

    results: dict[str, EvalResult] = {}
    for name, path in adapters.items():
        started = time.perf_counter()
        if path is None:
            if named:
                with model.disable_adapter():
                    loss_sum, tokens, examples = _score(model, batches, device)
            else:
                loss_sum, tokens, examples = _score(model, batches, device)
        else:
            model.set_adapter(name)
            loss_sum, tokens, examples = _score(model, batches, device)
        loss = loss_sum / tokens
        if not math.isfinite(loss):
            raise RuntimeError(f"eval loss of {name!r} is not finite: {loss}")
        results[name] = EvalResult(
            loss=loss,
            perplexity=perplexity(loss),
            tokens=tokens,
            examples=examples,
            duration_s=time.perf_counter() - started,
        )
        log.info(
            "eval %s: loss %.4f perplexity %.2f (%d tokens, %d examples, %s tokens)",
            name,
            loss,
            results[name].perplexity,
            tokens,
            examples,
            mask.loss_on,
        )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return results


_Batch = tuple[Any, Any, Any, int]  # input_ids, attention_mask, labels, examples


def _batches(
    encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int
) -> list[_Batch]:
    import torch

    from trainers.hf import IGNORE_INDEX

    # Similar lengths together: less padding.
    ordered = sorted(encoded, key=lambda pair: len(pair[0]))
    out: list[_Batch] = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (seq, lab) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            labels[row, : len(lab)] = torch.tensor(lab)
        out.append((ids, attention, labels, len(chunk)))
    return out


def _score(model: Any, batches: list[_Batch], device: str) -> tuple[float, int, int]:
    """(summed NLL, loss tokens, examples) over the batches."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from trainers.hf import IGNORE_INDEX

    total = 0.0
    tokens = 0
    examples = 0
    with torch.inference_mode():
        for ids, attention, labels, count in batches:
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            shifted = logits[:, :-1, :].float()
            targets = labels[:, 1:].to(device)
            total += float(
                F.cross_entropy(
                    shifted.reshape(-1, shifted.size(-1)),
                    targets.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            tokens += int((targets != IGNORE_INDEX).sum())
            examples += count
    return total, tokens, examples
