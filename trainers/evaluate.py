"""Evaluate the base model, the active adapter and a candidate on the same eval set.

The number is the mean token loss: the summed next-token negative log-likelihood over the
loss tokens of every eval conversation divided by the number of those tokens (token-weighted,
so long answers count for what they contain). Loss tokens are the same as in training: the
assistant's replies, including their end-of-turn token, when the chat template supports it,
else every token (`trainers.hf.resolve_loss_mask`); conversations are truncated to
``max_length`` like in training. Perplexity is ``exp(loss)``.

The base model is loaded once; every adapter is attached to it by name and switched on in
turn; ``None`` means the bare base model (adapters disabled). `evaluate_sets` scores several
eval sets (the dataset's eval split and the golden set) with one load of the model.

Each result also keeps the per-conversation sums (``per_example``: summed NLL and loss tokens,
in the order of the tokenized conversations, the same for every adapter), so two models can be
compared example by example (the paired bootstrap in `trainers.promote`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnstream.core.settings import TrainingSettings

if TYPE_CHECKING:
    from trainers.data import Messages

log = logging.getLogger("learnstream.trainers.evaluate")

_MAX_EXP = 700.0  # exp() of more overflows a float

SHIPPED_GOLDEN = Path(__file__).resolve().parent.parent / "evals" / "golden.jsonl"
"""The sample golden set of a source checkout (``evals/golden.jsonl``)."""


def load_golden(path: Path, system_prompt: str | None = None) -> list[Messages]:
    """The conversations of a golden-set JSONL file.

    Each non-blank line is an object with ``messages`` (OpenAI chat format: optional system
    first, then user and assistant turns, ending with the assistant's); other keys (such as
    ``metadata``) are ignored. Conversations without a system message get ``system_prompt``
    first, like dataset examples. Raises ValueError naming the line of the first bad one,
    FileNotFoundError for a missing file.
    """
    import json

    from pydantic import ValidationError

    from schemas.pattern import ChatMessage

    out: list[Messages] = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                raw = data["messages"] if isinstance(data, dict) else None
                if not isinstance(raw, list) or len(raw) < 2:
                    raise ValueError("needs a 'messages' list of at least two messages")
                messages = [ChatMessage.model_validate(m) for m in raw]
            except (ValueError, KeyError, ValidationError) as exc:
                raise ValueError(f"golden set {path}, line {number}: {exc}") from None
            roles = [m.role for m in messages]
            if roles[-1] != "assistant" or "user" not in roles:
                raise ValueError(
                    f"golden set {path}, line {number}: needs a user message and must end "
                    "with the assistant's"
                )
            conversation = [{"role": m.role, "content": m.content} for m in messages]
            if roles[0] != "system" and system_prompt:
                conversation.insert(0, {"role": "system", "content": system_prompt})
            out.append(conversation)
    if not out:
        raise ValueError(f"golden set {path} has no examples")
    return out


@dataclass(frozen=True)
class EvalResult:
    """One model's numbers on the eval set."""

    loss: float
    perplexity: float
    tokens: int
    examples: int
    duration_s: float
    per_example: tuple[tuple[float, int], ...] = ()
    """(summed NLL, loss tokens) of each scored conversation, in a fixed order."""

    @property
    def example_losses(self) -> list[float]:
        """The summed NLL of each conversation (pair them across models by position)."""
        return [nll for nll, _ in self.per_example]


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
    return evaluate_sets(base_model, {"eval": conversations}, adapters, settings)["eval"]


def evaluate_sets(
    base_model: str,
    sets: Mapping[str, Sequence[Messages]],
    adapters: Mapping[str, Path | None],
    settings: TrainingSettings | None = None,
) -> dict[str, dict[str, EvalResult]]:
    """`evaluate_adapters` for several named eval sets with one load of the model:
    ``{set name: {adapter name: result}}``.

    Raises ValueError when a set has no conversation with a loss token, RuntimeError when a
    loss is not finite.
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
    batched: dict[str, list[_Batch]] = {}
    for set_name, conversations in sets.items():
        batches = _batches(
            tokenize_examples(tokenizer, conversations, mask, settings.max_length),
            settings.batch_size,
            int(tokenizer.pad_token_id),
        )
        if not batches:
            raise ValueError(f"the {set_name} set has no tokens to score")
        batched[set_name] = batches

    model: Any = load_model(base_model, device, bf16)
    named = {name: path for name, path in adapters.items() if path is not None}
    if named:
        from peft import PeftModel

        first, *rest = named.items()
        model = PeftModel.from_pretrained(model, str(first[1]), adapter_name=first[0])
        for extra_name, extra_path in rest:
            model.load_adapter(str(extra_path), adapter_name=extra_name)
    model.eval()

    results: dict[str, dict[str, EvalResult]] = {set_name: {} for set_name in sets}
    for name, path in adapters.items():
        if path is not None:
            model.set_adapter(name)
        for set_name, batches in batched.items():
            started = time.perf_counter()
            if path is None and named:
                with model.disable_adapter():
                    per_example = _score(model, batches, device)
            else:
                per_example = _score(model, batches, device)
            loss_sum = sum(nll for nll, _ in per_example)
            tokens = sum(count for _, count in per_example)
            loss = loss_sum / tokens
            if not math.isfinite(loss):
                raise RuntimeError(f"{set_name} loss of {name!r} is not finite: {loss}")
            result = EvalResult(
                loss=loss,
                perplexity=perplexity(loss),
                tokens=tokens,
                examples=len(per_example),
                duration_s=time.perf_counter() - started,
                per_example=tuple(per_example),
            )
            results[set_name][name] = result
            log.info(
                "%s %s: loss %.4f perplexity %.2f (%d tokens, %d examples, %s tokens)",
                set_name,
                name,
                loss,
                result.perplexity,
                tokens,
                result.examples,
                mask.loss_on,
            )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return results


_Batch = tuple[Any, Any, Any, list[int]]  # input_ids, attention_mask, labels, positions


def _batches(
    encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int
) -> list[_Batch]:
    import torch

    from trainers.hf import IGNORE_INDEX

    # Similar lengths together: less padding. Each row remembers its position in ``encoded``.
    ordered = sorted(range(len(encoded)), key=lambda n: len(encoded[n][0]))
    out: list[_Batch] = []
    for start in range(0, len(ordered), batch_size):
        positions = ordered[start : start + batch_size]
        chunk = [encoded[n] for n in positions]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (seq, lab) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            labels[row, : len(lab)] = torch.tensor(lab)
        out.append((ids, attention, labels, positions))
    return out


def _score(model: Any, batches: list[_Batch], device: str) -> list[tuple[float, int]]:
    """(summed NLL, loss tokens) per conversation, in the order they were tokenized."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from trainers.hf import IGNORE_INDEX

    rows = sum(len(positions) for *_, positions in batches)
    out: list[tuple[float, int]] = [(0.0, 0)] * rows
    with torch.inference_mode():
        for ids, attention, labels, positions in batches:
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
            shifted = logits[:, :-1, :].float()
            targets = labels[:, 1:].to(device)
            nll = F.cross_entropy(
                shifted.reshape(-1, shifted.size(-1)),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).reshape(targets.shape)
            sums = nll.sum(dim=1).tolist()
            counts = (targets != IGNORE_INDEX).sum(dim=1).tolist()
            for position, total, count in zip(positions, sums, counts, strict=True):
                out[position] = (float(total), int(count))
    return out
