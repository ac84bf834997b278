-- Events with SparkPost's fields, and event webhooks.
--
-- messages.info and events.detail are JSON text: what events report
-- beyond the columns searched on (From: and Subject: of the message, the
-- client's address, bounce class, retries, queue time...). text, not
-- jsonb: nothing queries inside them and text is cheaper to write. Only
-- recipient gains an index: the one search people page by that the time
-- index does not serve.

ALTER TABLE messages ADD COLUMN info text;
ALTER TABLE events ADD COLUMN detail text;
CREATE INDEX events_recipient ON events (recipient, time);

-- txid is the writing transaction. Webhooks read events in (txid, id)
-- order, only below the oldest transaction still running: ids are taken
-- before commit, so a cursor on id alone could pass an event whose
-- transaction commits later; one on (txid, id) below that horizon cannot.
ALTER TABLE events ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_txid ON events (txid, id);

CREATE TABLE webhooks (
	id          text PRIMARY KEY,
	subaccount  bigint,             -- NULL: the master account and every subaccount
	name        text NOT NULL,
	target      text NOT NULL,
	events      text[] NOT NULL DEFAULT '{}',
	active      boolean NOT NULL DEFAULT true,
	auth_type   text NOT NULL DEFAULT 'none',
	auth        text NOT NULL DEFAULT '{}', -- auth_request_details and auth_credentials, JSON
	headers     text NOT NULL DEFAULT '{}', -- custom_headers, JSON
	secret      text NOT NULL DEFAULT '',   -- HMAC-SHA256 signing secret
	cursor_txid xid8 NOT NULL DEFAULT '0',
	cursor_id   bigint NOT NULL DEFAULT 0,
	created_at  timestamptz NOT NULL,
	updated_at  timestamptz NOT NULL
);

CREATE TABLE webhook_batches (
	id           text PRIMARY KEY,
	webhook_id   text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
	body         bytea NOT NULL,
	events       integer NOT NULL,
	state        text NOT NULL,   -- pending, delivered, failed
	attempts     integer NOT NULL DEFAULT 0,
	next_attempt timestamptz NOT NULL,
	lease_owner  text,
	lease_until  timestamptz,
	created_at   timestamptz NOT NULL,
	updated_at   timestamptz NOT NULL
);
CREATE INDEX webhook_batches_due ON webhook_batches (state, next_attempt);
CREATE INDEX webhook_batches_webhook ON webhook_batches (webhook_id, created_at);

CREATE TABLE webhook_attempts (
	id            bigserial PRIMARY KEY,
	webhook_id    text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
	batch_id      text NOT NULL,
	time          timestamptz NOT NULL,
	attempt       integer NOT NULL,
	response_code integer NOT NULL DEFAULT 0,
	failure       text NOT NULL DEFAULT '',
	node          text NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_webhook ON webhook_attempts (webhook_id, time);
