-- Web console sign-in sessions (package console). The browser holds the
-- session id; only its SHA-256 is stored, with the SHA-256 of the API key
-- that signed in (the same hash api_keys holds), so every request checks
-- the key again.

CREATE TABLE console_sessions (
	id_hash      bytea PRIMARY KEY,
	key_id       text NOT NULL,
	key_hash     bytea NOT NULL,
	client_ip    text NOT NULL DEFAULT '',
	created_at   timestamptz NOT NULL,
	last_seen_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);
