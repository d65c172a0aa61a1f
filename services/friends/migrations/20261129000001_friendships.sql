-- One row per unordered pair of users, whichever of them asked first: concurrent
-- opposite requests (A→B and B→A) collide on friendships_pair_key instead of making two
-- rows, and the loser of the race sees the winner's row and accepts it.
CREATE TABLE friendships (
    -- Who sent the latest request.
    user_id    UUID        NOT NULL,
    -- Who that request is addressed to.
    friend_id  UUID        NOT NULL,
    status     TEXT        NOT NULL CHECK (status IN ('requested', 'accepted', 'rejected')),
    -- When the latest request was sent.
    created_at TIMESTAMPTZ NOT NULL,
    -- When the status last changed (for 'accepted': when they became friends).
    updated_at TIMESTAMPTZ NOT NULL,
    CHECK (user_id <> friend_id)
);

CREATE UNIQUE INDEX friendships_pair_key
    ON friendships (LEAST(user_id, friend_id), GREATEST(user_id, friend_id));

-- A user's lists read the rows on either side.
CREATE INDEX friendships_user_id ON friendships (user_id);
CREATE INDEX friendships_friend_id ON friendships (friend_id);
