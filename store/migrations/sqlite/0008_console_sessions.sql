-- Web console sign-in sessions (package console). The browser holds the
-- session id; only its SHA-256 is stored, with the SHA-256 of the API key
-- that signed in (the same hash api_keys holds), so every request checks
-- the key again. Times are Unix microseconds.

CREATE TABLE console_sessions (
	id_hash      BLOB PRIMARY KEY,
	key_id       TEXT NOT NULL,
	key_hash     BLOB NOT NULL,
	client_ip    TEXT NOT NULL DEFAULT '',
	created_at   INTEGER NOT NULL,
	last_seen_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);
