-- Sign-in through OAuth 2.0 / OpenID Connect providers. One account may link several
-- providers, so identities get their own table; the accounts.oauth_provider/oauth_subject
-- pair (one identity per account) stays unused and can be dropped in a later release.
-- An account created by a provider has no password and, unless the provider vouched
-- for its email, no email: the column becomes optional (old readers look accounts up
-- by email only, so they never meet such a row).
ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL;

CREATE TABLE IF NOT EXISTS oauth_identities (
    -- The provider's name in AUTH_OAUTH_PROVIDERS and its subject (`sub`) for the user.
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    UUID NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    linked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject),
    -- One identity per provider and account.
    CONSTRAINT oauth_identities_one_per_provider UNIQUE (user_id, provider),
    CONSTRAINT oauth_identities_subject_length CHECK (char_length(subject) BETWEEN 1 AND 255)
);
