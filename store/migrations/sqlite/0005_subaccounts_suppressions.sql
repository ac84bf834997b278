-- Subaccounts as entities, the suppression list, and the verification
-- status of sending domains.
--
-- Keys, sending domains and messages stored before this migration may name
-- subaccount ids that had no row anywhere: each such id gets a subaccount
-- row here ("Subaccount N", active), so every reference stays valid and
-- nothing that worked before stops working. Ids created later continue
-- after the largest one (AUTOINCREMENT).

CREATE TABLE subaccounts (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	name       TEXT NOT NULL,
	status     TEXT NOT NULL DEFAULT 'active',
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
);

INSERT INTO subaccounts (id, name, status, created_at, updated_at)
	SELECT sub, 'Subaccount ' || sub, 'active',
		CAST(strftime('%s', 'now') AS INTEGER) * 1000000, CAST(strftime('%s', 'now') AS INTEGER) * 1000000
	FROM (SELECT subaccount AS sub FROM api_keys
		UNION SELECT subaccount FROM domains
		UNION SELECT subaccount FROM messages)
	WHERE sub > 0;

-- Held and dropped mail of suspended and terminated subaccounts is found
-- through its messages.
CREATE INDEX messages_subaccount ON messages (subaccount) WHERE subaccount <> 0;

-- One row per suppressed recipient and type; recipient is lowercased.
CREATE TABLE suppressions (
	subaccount  INTEGER NOT NULL DEFAULT 0,
	recipient   TEXT NOT NULL,
	type        TEXT NOT NULL,
	source      TEXT NOT NULL DEFAULT '',
	description TEXT NOT NULL DEFAULT '',
	created_at  INTEGER NOT NULL,
	updated_at  INTEGER NOT NULL,
	PRIMARY KEY (recipient, subaccount, type)
);
CREATE INDEX suppressions_updated ON suppressions (updated_at);

-- The result of the last verification of a sending domain; no row:
-- never verified.
CREATE TABLE domain_status (
	name               TEXT PRIMARY KEY REFERENCES domains (name) ON DELETE CASCADE,
	ownership_verified INTEGER NOT NULL DEFAULT 0,
	dkim_status        TEXT NOT NULL DEFAULT 'unverified',
	spf_status         TEXT NOT NULL DEFAULT 'unverified',
	dkim_error         TEXT NOT NULL DEFAULT '',
	spf_error          TEXT NOT NULL DEFAULT '',
	verified_at        INTEGER NOT NULL
);
