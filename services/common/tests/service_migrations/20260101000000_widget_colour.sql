-- A service migration with a timestamp version, as `sqlx migrate add` does by default.
ALTER TABLE widgets ADD COLUMN colour TEXT;
