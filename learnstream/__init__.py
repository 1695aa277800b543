"""learnstream: turn the telemetry of AI developer tools into better models, continuously."""

__version__ = "0.1.0"
