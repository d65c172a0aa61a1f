-- Accounts of the auth service. The email is stored normalised (trimmed, lower-case);
-- the unique index on lower(email) also guards against a writer that forgets to.
CREATE TABLE IF NOT EXISTS accounts (
    user_id        UUID PRIMARY KEY,
    email          TEXT NOT NULL,
    nickname       TEXT NOT NULL,
    -- argon2id PHC string; NULL for accounts that only sign in through OAuth.
    password_hash  TEXT,
    oauth_provider TEXT,
    oauth_subject  TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT accounts_email_length CHECK (char_length(email) <= 254),
    CONSTRAINT accounts_oauth_pair CHECK ((oauth_provider IS NULL) = (oauth_subject IS NULL))
);

CREATE UNIQUE INDEX IF NOT EXISTS accounts_email_key ON accounts (lower(email));
CREATE UNIQUE INDEX IF NOT EXISTS accounts_oauth_key ON accounts (oauth_provider, oauth_subject)
    WHERE oauth_provider IS NOT NULL;
