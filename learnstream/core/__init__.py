"""The ground every other package stands on: settings, Kafka client configuration and broker
differences, metrics, errors, the process lifecycle (signals, logging) and periodic summaries.

Nothing here imports a stage (`scorers`, `extractors`, `trainers`), a runtime (`streams`,
`consumers`) or a command (`learnstream.cli`, `learnstream.demo`, ...); import-linter enforces it
(`[tool.importlinter]` in pyproject.toml). The rest of `learnstream` is the top: the CLI, the
demo, replay, the dev broker and the local Kafka.
"""
