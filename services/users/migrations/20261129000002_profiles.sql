-- Public profiles, created from UserRegistered events.
CREATE TABLE profiles (
    user_id    UUID PRIMARY KEY,
    -- Always lower-case; "C" collation gives byte order for keyset pagination and lets the
    -- unique index serve LIKE 'prefix%' searches.
    nickname   TEXT COLLATE "C" NOT NULL CHECK (nickname = lower(nickname)),
    bio        TEXT NOT NULL DEFAULT '',
    avatar_url TEXT NOT NULL DEFAULT '',
    -- Grows by one on every change; caches keep the highest version they have seen.
    version    BIGINT NOT NULL DEFAULT 1,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX profiles_nickname_key ON profiles (nickname);
