-- smtpgw schema, PostgreSQL. Unqualified names: the schema is the
-- connection's search_path.

CREATE TABLE api_keys (
	id           text PRIMARY KEY,
	label        text NOT NULL DEFAULT '',
	grants       text[] NOT NULL DEFAULT '{}',
	short_key    text NOT NULL DEFAULT '',
	hash         bytea NOT NULL,
	subaccount   bigint NOT NULL DEFAULT 0,
	allowed_ips  text[] NOT NULL DEFAULT '{}',
	created_at   timestamptz NOT NULL,
	updated_at   timestamptz NOT NULL,
	last_used_at timestamptz,
	revoked_at   timestamptz
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (hash);

CREATE TABLE messages (
	id          text PRIMARY KEY,
	key_id      text NOT NULL DEFAULT '',
	subaccount  bigint NOT NULL DEFAULT 0,
	mail_from   text NOT NULL DEFAULT '',
	body        bytea NOT NULL,
	smtputf8    boolean NOT NULL DEFAULT false,
	body_type   text NOT NULL DEFAULT '',
	dsn_ret     text NOT NULL DEFAULT '',
	dsn_envid   text NOT NULL DEFAULT '',
	campaign_id text NOT NULL DEFAULT '',
	msys_api    text,
	created_at  timestamptz NOT NULL
);
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE recipients (
	id           bigserial PRIMARY KEY,
	message_id   text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
	address      text NOT NULL,
	domain       text NOT NULL DEFAULT '',
	state        text NOT NULL,
	attempts     integer NOT NULL DEFAULT 0,
	next_attempt timestamptz NOT NULL,
	last_reply   text NOT NULL DEFAULT '',
	dsn_notify   text NOT NULL DEFAULT '',
	dsn_orcpt    text NOT NULL DEFAULT '',
	lease_owner  text,
	lease_until  timestamptz,
	updated_at   timestamptz NOT NULL
);
CREATE INDEX recipients_due ON recipients (state, next_attempt);
CREATE INDEX recipients_message ON recipients (message_id);
CREATE INDEX recipients_domain ON recipients (domain);

CREATE TABLE events (
	id          bigserial PRIMARY KEY,
	type        text NOT NULL,
	time        timestamptz NOT NULL,
	message_id  text NOT NULL DEFAULT '',
	key_id      text NOT NULL DEFAULT '',
	subaccount  bigint NOT NULL DEFAULT 0,
	recipient   text NOT NULL DEFAULT '',
	campaign_id text NOT NULL DEFAULT '',
	metadata    jsonb,
	tags        text[],
	reply       text NOT NULL DEFAULT ''
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_message ON events (message_id);

CREATE TABLE domains (
	name        text PRIMARY KEY,
	subaccount  bigint NOT NULL DEFAULT 0,
	shared      boolean NOT NULL DEFAULT false,
	selector    text NOT NULL DEFAULT '',
	algorithm   text NOT NULL DEFAULT '',
	private_key bytea NOT NULL,
	public_key  text NOT NULL DEFAULT '',
	created_at  timestamptz NOT NULL
);
