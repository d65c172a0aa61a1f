-- A service migration numbered the way `sqlx migrate add -s` does (version 1).
CREATE TABLE widgets (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
