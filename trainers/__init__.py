"""LoRA fine-tuning, evaluation, the adapter store, promotion and hot-swap notifiers.

Entry points (import the submodules; this package imports nothing heavy):

* `trainers.pipeline.run_training_job(settings, trigger)` -> `TrainingResult`: one job.
* `trainers.commands.adapters`: the ``learnstream adapters`` click group.
* `trainers.adapters.AdapterStore`: versions, manifest, activation, rollback, job records.
* `trainers.train.main(TrainConfig)`, `trainers.evaluate.evaluate_adapters`,
  `trainers.promote.decide`, `trainers.hotswap.notify_all`, `trainers.data.prepare_dataset`.
* `trainers.tiny.build_tiny_model(path)`: a tiny local model for tests and the demo.
"""
