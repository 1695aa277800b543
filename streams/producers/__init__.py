"""Producers that publish tool telemetry: the SDK, file tailers and the HTTP gateway.

Only the base install is needed (pydantic, confluent-kafka, prometheus-client).
"""

from streams.producers.sdk import TelemetryProducer

__all__ = ["TelemetryProducer"]
