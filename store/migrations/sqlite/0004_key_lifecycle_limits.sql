-- Key lifecycle (expiry, last client address), paged key listings, and
-- sending limits counted across every node sharing the store.

-- NULL: the key never expires. Times are integer Unix microseconds (UTC).
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
-- The client address of the recorded last use; '' if never used.
ALTER TABLE api_keys ADD COLUMN last_used_ip TEXT NOT NULL DEFAULT '';

-- Active keys in listing order, alone and per subaccount: a page is read
-- from the index and stops when full, whatever the number of keys.
CREATE INDEX api_keys_active ON api_keys (created_at, id) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_active_subaccount ON api_keys (subaccount, created_at, id) WHERE revoked_at IS NULL;

-- Sending limits of a key (kind 'key', id the key id) or a subaccount
-- (kind 'subaccount', id the subaccount number in decimal); 0: no limit.
CREATE TABLE sending_limits (
	kind       TEXT NOT NULL,
	id         TEXT NOT NULL,
	per_minute INTEGER NOT NULL DEFAULT 0,
	per_hour   INTEGER NOT NULL DEFAULT 0,
	per_day    INTEGER NOT NULL DEFAULT 0,
	per_month  INTEGER NOT NULL DEFAULT 0,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (kind, id)
);

-- Messages counted (reserved) per limited scope and window. unit is 'm',
-- 'h', 'd' or 'mo'; window_end lets old windows be pruned.
CREATE TABLE sending_counts (
	kind         TEXT NOT NULL,
	id           TEXT NOT NULL,
	unit         TEXT NOT NULL,
	window_start INTEGER NOT NULL,
	window_end   INTEGER NOT NULL,
	count        INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (kind, id, unit, window_start)
);
CREATE INDEX sending_counts_end ON sending_counts (window_end);
