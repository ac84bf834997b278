-- Events with SparkPost's fields, and event webhooks.
--
-- messages.info and events.detail are JSON text: what events report
-- beyond the columns searched on (From: and Subject: of the message, the
-- client's address, bounce class, retries, queue time...). The searched
-- fields (type, time, message id, recipient, campaign, subaccount) stay
-- columns. Only recipient gains an index: the one search people page by
-- that the time index does not serve.

ALTER TABLE messages ADD COLUMN info TEXT;
ALTER TABLE events ADD COLUMN detail TEXT;
CREATE INDEX events_recipient ON events (recipient, time);

-- A webhook reads the events table from its own durable cursor (the last
-- event id turned into a batch): SQLite writes one transaction at a time,
-- so event ids become visible in order and the cursor never skips one.
CREATE TABLE webhooks (
	id          TEXT PRIMARY KEY,
	subaccount  INTEGER,            -- NULL: the master account and every subaccount
	name        TEXT NOT NULL,
	target      TEXT NOT NULL,
	events      TEXT NOT NULL DEFAULT '[]',
	active      INTEGER NOT NULL DEFAULT 1,
	auth_type   TEXT NOT NULL DEFAULT 'none',
	auth        TEXT NOT NULL DEFAULT '{}', -- auth_request_details and auth_credentials, JSON
	headers     TEXT NOT NULL DEFAULT '{}', -- custom_headers, JSON
	secret      TEXT NOT NULL DEFAULT '',   -- HMAC-SHA256 signing secret
	cursor_id   INTEGER NOT NULL DEFAULT 0,
	created_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL
);

-- A batch is a rendered body for one webhook, sent until a 2xx or until
-- it is too old. Claimed with a lease like recipients.
CREATE TABLE webhook_batches (
	id           TEXT PRIMARY KEY,
	webhook_id   TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
	body         BLOB NOT NULL,
	events       INTEGER NOT NULL,
	state        TEXT NOT NULL,   -- pending, delivered, failed
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL,
	lease_owner  TEXT,
	lease_until  INTEGER,
	created_at   INTEGER NOT NULL,
	updated_at   INTEGER NOT NULL
);
CREATE INDEX webhook_batches_due ON webhook_batches (state, next_attempt);
CREATE INDEX webhook_batches_webhook ON webhook_batches (webhook_id, created_at);

-- One row per POST of a batch, for batch-status.
CREATE TABLE webhook_attempts (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	webhook_id    TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
	batch_id      TEXT NOT NULL,
	time          INTEGER NOT NULL,
	attempt       INTEGER NOT NULL,
	response_code INTEGER NOT NULL DEFAULT 0,
	failure       TEXT NOT NULL DEFAULT '',
	node          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook_id, time);
