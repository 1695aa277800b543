#!/usr/bin/env bash
# Generated from schemas/topics.py by `learnstream topics rpk-script`; do not edit.
# Creates learnstream's topics on Redpanda. Set RPK_BROKERS (or use an rpk profile)
# and REPLICAS (default 1; use 3 on a production cluster).
set -euo pipefail
REPLICAS="${REPLICAS:-1}"

rpk topic create telemetry.ralph -p 6 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=2592000000 --if-not-exists
rpk topic create telemetry.aidb -p 6 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=2592000000 --if-not-exists
rpk topic create telemetry.hybrid -p 6 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=2592000000 --if-not-exists
rpk topic create telemetry.vscode -p 6 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=2592000000 --if-not-exists
rpk topic create interactions.scored -p 6 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=2592000000 --if-not-exists
rpk topic create patterns.candidates -p 3 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=2592000000 --if-not-exists
rpk topic create patterns.learned -p 3 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=-1 --if-not-exists
rpk topic create training.triggers -p 1 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=7776000000 --if-not-exists
rpk topic create training.results -p 1 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=-1 --if-not-exists
rpk topic create telemetry.dlq -p 3 -r "$REPLICAS" -c cleanup.policy=delete -c retention.ms=604800000 --if-not-exists
