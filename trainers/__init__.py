"""LoRA fine-tuning, evaluation, the adapter registry, promotion and hot-swap notifiers."""
