-- The audit log (package audit): one row per change to keys, subaccounts,
-- sending domains, webhooks and suppressions. before/after are JSON views
-- of the object that never hold a key, key hash or secret. Rows are pruned
-- with events (events.retention).

CREATE TABLE audit (
	id             bigserial PRIMARY KEY,
	time           timestamptz NOT NULL,
	action         text NOT NULL,
	object_type    text NOT NULL,
	object_id      text NOT NULL DEFAULT '',
	subaccount     bigint NOT NULL DEFAULT 0,
	before_json    jsonb,
	after_json     jsonb,
	via            text NOT NULL DEFAULT '',
	actor_key_id   text NOT NULL DEFAULT '',
	actor_short    text NOT NULL DEFAULT '',
	actor_user     text NOT NULL DEFAULT '',
	actor_host     text NOT NULL DEFAULT '',
	ip             text NOT NULL DEFAULT ''
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_subaccount ON audit (subaccount, id);
