-- The audit log (package audit): one row per change to keys, subaccounts,
-- sending domains, webhooks and suppressions. before/after are JSON views
-- of the object that never hold a key, key hash or secret. Rows are pruned
-- with events (events.retention).

CREATE TABLE audit (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	time           INTEGER NOT NULL,
	action         TEXT NOT NULL,
	object_type    TEXT NOT NULL,
	object_id      TEXT NOT NULL DEFAULT '',
	subaccount     INTEGER NOT NULL DEFAULT 0,
	before_json    TEXT,
	after_json     TEXT,
	via            TEXT NOT NULL DEFAULT '',
	actor_key_id   TEXT NOT NULL DEFAULT '',
	actor_short    TEXT NOT NULL DEFAULT '',
	actor_user     TEXT NOT NULL DEFAULT '',
	actor_host     TEXT NOT NULL DEFAULT '',
	ip             TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_time ON audit (time);
CREATE INDEX audit_subaccount ON audit (subaccount, id);
