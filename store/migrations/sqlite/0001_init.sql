-- smtpgw schema, SQLite. Times are integer Unix microseconds, UTC.
-- Lists (grants, allowed IPs, tags) and metadata are JSON text.

CREATE TABLE api_keys (
	id           TEXT PRIMARY KEY,
	label        TEXT NOT NULL DEFAULT '',
	grants       TEXT NOT NULL DEFAULT '[]',
	short_key    TEXT NOT NULL DEFAULT '',
	hash         BLOB NOT NULL,
	subaccount   INTEGER NOT NULL DEFAULT 0,
	allowed_ips  TEXT NOT NULL DEFAULT '[]',
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL,
	last_used_at INTEGER,
	revoked_at   INTEGER
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (hash);

CREATE TABLE messages (
	id          TEXT PRIMARY KEY,
	key_id      TEXT NOT NULL DEFAULT '',
	subaccount  INTEGER NOT NULL DEFAULT 0,
	mail_from   TEXT NOT NULL DEFAULT '',
	body        BLOB NOT NULL,
	smtputf8    INTEGER NOT NULL DEFAULT 0,
	body_type   TEXT NOT NULL DEFAULT '',
	dsn_ret     TEXT NOT NULL DEFAULT '',
	dsn_envid   TEXT NOT NULL DEFAULT '',
	campaign_id TEXT NOT NULL DEFAULT '',
	msys_api    TEXT,
	created_at  INTEGER NOT NULL
);
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE recipients (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
	address      TEXT NOT NULL,
	domain       TEXT NOT NULL DEFAULT '',
	state        TEXT NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL,
	last_reply   TEXT NOT NULL DEFAULT '',
	dsn_notify   TEXT NOT NULL DEFAULT '',
	dsn_orcpt    TEXT NOT NULL DEFAULT '',
	lease_owner  TEXT,
	lease_until  INTEGER,
	updated_at   INTEGER NOT NULL
);
CREATE INDEX recipients_due ON recipients (state, next_attempt);
CREATE INDEX recipients_message ON recipients (message_id);
CREATE INDEX recipients_domain ON recipients (domain);

CREATE TABLE events (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	type        TEXT NOT NULL,
	time        INTEGER NOT NULL,
	message_id  TEXT NOT NULL DEFAULT '',
	key_id      TEXT NOT NULL DEFAULT '',
	subaccount  INTEGER NOT NULL DEFAULT 0,
	recipient   TEXT NOT NULL DEFAULT '',
	campaign_id TEXT NOT NULL DEFAULT '',
	metadata    TEXT,
	tags        TEXT,
	reply       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_message ON events (message_id);

CREATE TABLE domains (
	name        TEXT PRIMARY KEY,
	subaccount  INTEGER NOT NULL DEFAULT 0,
	shared      INTEGER NOT NULL DEFAULT 0,
	selector    TEXT NOT NULL DEFAULT '',
	algorithm   TEXT NOT NULL DEFAULT '',
	private_key BLOB NOT NULL,
	public_key  TEXT NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL
);
