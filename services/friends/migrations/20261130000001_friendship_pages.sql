-- Keyset pages of the friend list and the request lists, and the count of a user's
-- pending incoming requests (capped per user), each read from its own index.
CREATE INDEX friendships_accepted_by_requester
    ON friendships (user_id, updated_at, friend_id) WHERE status = 'accepted';
CREATE INDEX friendships_accepted_by_addressee
    ON friendships (friend_id, updated_at, user_id) WHERE status = 'accepted';
CREATE INDEX friendships_pending_incoming
    ON friendships (friend_id, created_at, user_id) WHERE status = 'requested';
CREATE INDEX friendships_pending_outgoing
    ON friendships (user_id, created_at, friend_id) WHERE status = 'requested';
