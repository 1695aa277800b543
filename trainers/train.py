"""LoRA supervised fine-tuning with peft and trl, in the shape of trl's ``sft`` script.

``main(TrainConfig) -> RunResult`` trains one adapter on conversational examples (OpenAI chat
``messages``) and saves it (``adapter_model.safetensors`` + ``adapter_config.json``) in
``config.output_dir``. Loss is on the assistant's tokens when the chat template allows it
(see `trainers.hf.resolve_loss_mask`). Progress goes to the log every few steps (step, loss,
learning rate); a tqdm bar is shown only when stderr is a terminal.

On cpu, ``SFTConfig`` gets ``use_cpu=True`` and ``bf16=False``; on a GPU, bf16 when supported.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnstream.core.settings import TrainingSettings

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig

    from trainers.data import Messages

log = logging.getLogger("learnstream.trainers.train")

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")

ProgressFn = Callable[[int, int, float | None], None]
"""Called as ``(step, max_steps, loss or None)`` after each logged step."""


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    base_model: str
    """Hub name or local path of the base causal LM."""
    output_dir: Path
    """Where the adapter is saved (created)."""
    train: Sequence[Messages]
    """Training conversations."""
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    on_progress: ProgressFn | None = None
    """Optional progress hook (e.g. a consumer's heartbeat)."""


@dataclass(frozen=True)
class RunResult:
    """What a training run produced."""

    adapter_dir: Path
    train_loss: float
    steps: int
    examples: int
    epochs: float
    duration_s: float
    examples_per_s: float
    device: str
    bf16: bool
    loss_on: str
    trainable_params: int

    def metrics(self) -> dict[str, float]:
        """The run's numbers for metrics.json / TrainingResult.metrics."""
        return {
            "train_loss": self.train_loss,
            "train_steps": float(self.steps),
            "train_epochs": self.epochs,
            "train_examples_per_s": self.examples_per_s,
            "trainable_params": float(self.trainable_params),
        }


def lora_config(settings: TrainingSettings) -> LoraConfig:
    """The peft ``LoraConfig`` for causal-LM LoRA from the training settings."""
    from peft import LoraConfig

    modules: str | list[str] = list(settings.target_modules)
    if [m.lower() for m in modules] == ["all-linear"]:
        modules = "all-linear"
    return LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(
    config: TrainConfig, *, device: str, bf16: bool, assistant_only_loss: bool
) -> SFTConfig:
    """The trl ``SFTConfig``: no checkpoints, no eval inside the trainer, no reporting."""
    from trl import SFTConfig

    s = config.settings
    steps_per_epoch = max(
        1, math.ceil(len(config.train) / (s.batch_size * s.gradient_accumulation_steps))
    )
    total = s.max_steps or max(1, math.ceil(steps_per_epoch * s.epochs))
    return SFTConfig(
        output_dir=str(config.output_dir / "trainer"),
        num_train_epochs=s.epochs,
        max_steps=s.max_steps or -1,
        learning_rate=s.learning_rate,
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        gradient_checkpointing=s.gradient_checkpointing,
        max_length=s.max_length,
        assistant_only_loss=assistant_only_loss,
        seed=s.seed,
        data_seed=s.seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=False,
        logging_steps=max(1, total // 20),
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
        dataloader_num_workers=0,
        warmup_steps=0,
    )


def _progress_callback(total_hint: int, on_progress: ProgressFn | None) -> TrainerCallback:
    from transformers import TrainerCallback

    class ProgressLog(TrainerCallback):
        """Logs step/loss lines and forwards them to ``on_progress``."""

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            logs = logs or {}
            loss = logs.get("loss")
            total = state.max_steps or total_hint
            if loss is not None:
                log.info(
                    "train step %d/%d loss %.4f lr %.2e epoch %.2f",
                    state.global_step,
                    total,
                    loss,
                    logs.get("learning_rate", 0.0),
                    state.epoch or 0.0,
                )
            if on_progress is not None:
                on_progress(state.global_step, total, None if loss is None else float(loss))

    return ProgressLog()


def main(config: TrainConfig) -> RunResult:
    """Train a LoRA adapter on ``config.train`` and save it in ``config.output_dir``."""
    from datasets import Dataset
    from trl import SFTTrainer

    from trainers.hf import (
        load_model,
        load_tokenizer,
        quiet_progress_bars,
        resolve_bf16,
        resolve_device,
        resolve_loss_mask,
    )

    if not config.train:
        raise ValueError("no training examples")
    quiet_progress_bars()
    s = config.settings
    device = resolve_device(s)
    bf16 = resolve_bf16(s, device)
    tokenizer = load_tokenizer(config.base_model)
    mask = resolve_loss_mask(tokenizer, s.loss_on)
    model = load_model(config.base_model, device, bf16)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    args = sft_config(
        config, device=device, bf16=bf16, assistant_only_loss=mask.loss_on == "assistant"
    )
    dataset = Dataset.from_list([{"messages": list(m)} for m in config.train])
    log.info(
        "training LoRA r=%d on %s: %d examples, device %s%s, loss on %s tokens",
        s.lora_rank,
        config.base_model,
        len(config.train),
        device,
        " bf16" if bf16 else "",
        mask.loss_on,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(s),
        callbacks=[_progress_callback(args.max_steps, config.on_progress)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; ProgressLog logs them
    peft_model: Any = trainer.model
    trainable = sum(int(p.numel()) for p in peft_model.parameters() if p.requires_grad)
    started = time.perf_counter()
    output = trainer.train()
    duration = time.perf_counter() - started
    peft_model.save_pretrained(str(config.output_dir), safe_serialization=True)
    missing = [name for name in ADAPTER_FILES if not (config.output_dir / name).exists()]
    if missing:
        raise RuntimeError(f"adapter not saved: {missing} missing in {config.output_dir}")
    steps = int(output.global_step)
    epochs = float(trainer.state.epoch or 0.0)
    seen = min(
        steps * s.batch_size * s.gradient_accumulation_steps, math.ceil(epochs * len(dataset))
    )
    seen = seen or len(dataset)
    result = RunResult(
        adapter_dir=config.output_dir,
        train_loss=float(output.training_loss),
        steps=steps,
        examples=len(dataset),
        epochs=epochs,
        duration_s=duration,
        examples_per_s=seen / duration if duration > 0 else 0.0,
        device=device,
        bf16=bf16,
        loss_on=mask.loss_on,
        trainable_params=trainable,
    )
    log.info(
        "trained %d steps in %.1fs (%.1f examples/s), loss %.4f",
        steps,
        duration,
        result.examples_per_s,
        result.train_loss,
    )
    shutil.rmtree(config.output_dir / "trainer", ignore_errors=True)
    del trainer, model
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    return result
