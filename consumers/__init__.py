"""Plain confluent-kafka consumers for slow or blocking work (PostgreSQL sink, trainer)."""
