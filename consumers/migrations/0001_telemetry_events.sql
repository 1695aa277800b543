-- telemetry_events: one row per event of interactions.scored, upserted by event id.
-- Applied by consumers/migrate.py inside one transaction; never edit once released:
-- add a later-numbered file instead.

CREATE TABLE telemetry_events (
    event_id        text PRIMARY KEY,
    source          text NOT NULL,
    event_type      text NOT NULL,
    event_time      timestamptz NOT NULL,
    record_key      text NOT NULL,
    scorable        boolean NOT NULL,
    outcome         text NOT NULL,
    payload         jsonb NOT NULL,
    interaction     jsonb NOT NULL,
    score           double precision,
    factors         jsonb,
    weights         jsonb,
    inputs          jsonb NOT NULL,
    threshold       double precision NOT NULL,
    high_value      boolean NOT NULL,
    scorer_version  text,
    scored_at       timestamptz NOT NULL,
    schema_version  integer NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT telemetry_events_score_range CHECK (score IS NULL OR (score >= 0 AND score <= 1))
);

COMMENT ON TABLE telemetry_events IS
    'Every ScoredInteraction from interactions.scored (lifecycle events with a NULL score), '
    'upserted by event_id by the telemetry sink.';
COMMENT ON COLUMN telemetry_events.event_time IS 'When the event happened (the tool''s timestamp).';
COMMENT ON COLUMN telemetry_events.record_key IS
    'The source record''s key: task, session or conversation id.';
COMMENT ON COLUMN telemetry_events.payload IS 'The source event as the tool sent it.';
COMMENT ON COLUMN telemetry_events.interaction IS
    'The normalized Interaction (query, response, outcome, ...) without its payload.';
COMMENT ON COLUMN telemetry_events.score IS 'The value score; NULL for lifecycle events.';
COMMENT ON COLUMN telemetry_events.inputs IS 'What each factor was computed from, by factor.';
COMMENT ON COLUMN telemetry_events.ingested_at IS 'When the sink first wrote the event.';
COMMENT ON COLUMN telemetry_events.updated_at IS 'When the sink last wrote the event.';
COMMENT ON COLUMN telemetry_events.kafka_offset IS
    'Where the row was last read from (kafka_topic, kafka_partition, kafka_offset).';

CREATE INDEX telemetry_events_source_time_idx ON telemetry_events (source, event_time);
CREATE INDEX telemetry_events_event_time_idx ON telemetry_events (event_time);
CREATE INDEX telemetry_events_high_value_idx ON telemetry_events (high_value) WHERE high_value;
