-- messenger-common: transactional outbox. Services insert events here in the same
-- transaction as the state change; OutboxRelay publishes them in id order and marks
-- them sent. (Version 19700101000001: common's migrations use 1970 timestamps so they
-- never collide with a service's own migrations in the shared _sqlx_migrations table.)
CREATE TABLE IF NOT EXISTS messenger_outbox (
    id          BIGSERIAL   PRIMARY KEY,
    topic       TEXT        NOT NULL,
    event_key   TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ,
    attempts    INTEGER     NOT NULL DEFAULT 0,
    last_error  TEXT
);

CREATE INDEX IF NOT EXISTS messenger_outbox_pending
    ON messenger_outbox (id) WHERE sent_at IS NULL;
