-- messenger-common: each service's relay reads only its own topics' pending rows (services
-- sharing one database share this table), and processed event ids expire by age.
CREATE INDEX IF NOT EXISTS messenger_outbox_pending_by_topic
    ON messenger_outbox (topic, id) WHERE sent_at IS NULL;

CREATE INDEX IF NOT EXISTS messenger_processed_events_age
    ON messenger_processed_events (processed_at);
