-- messenger-common: event ids a consumer has already applied, so a redelivered event
-- (Kafka delivery is at-least-once) has no second effect. Written by mark_processed in
-- the same transaction as the handler's effects.
CREATE TABLE IF NOT EXISTS messenger_processed_events (
    consumer     TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
