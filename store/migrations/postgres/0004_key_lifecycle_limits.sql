-- Key lifecycle (expiry, last client address), paged key listings, and
-- sending limits counted across every node sharing the store.

-- NULL: the key never expires.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
-- The client address of the recorded last use; '' if never used.
ALTER TABLE api_keys ADD COLUMN last_used_ip text NOT NULL DEFAULT '';

-- Active keys in listing order, alone and per subaccount: a page is read
-- from the index and stops when full, whatever the number of keys.
CREATE INDEX api_keys_active ON api_keys (created_at, id) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_active_subaccount ON api_keys (subaccount, created_at, id) WHERE revoked_at IS NULL;
-- Keys holding a grant (grants @> ARRAY[g]).
CREATE INDEX api_keys_grants ON api_keys USING gin (grants) WHERE revoked_at IS NULL;

-- Sending limits of a key (kind 'key', id the key id) or a subaccount
-- (kind 'subaccount', id the subaccount number in decimal); 0: no limit.
CREATE TABLE sending_limits (
	kind       text NOT NULL,
	id         text NOT NULL,
	per_minute bigint NOT NULL DEFAULT 0,
	per_hour   bigint NOT NULL DEFAULT 0,
	per_day    bigint NOT NULL DEFAULT 0,
	per_month  bigint NOT NULL DEFAULT 0,
	updated_at timestamptz NOT NULL,
	PRIMARY KEY (kind, id)
);

-- Messages counted (reserved) per limited scope and window. unit is 'm',
-- 'h', 'd' or 'mo'; window_end lets old windows be pruned.
CREATE TABLE sending_counts (
	kind         text NOT NULL,
	id           text NOT NULL,
	unit         text NOT NULL,
	window_start timestamptz NOT NULL,
	window_end   timestamptz NOT NULL,
	count        bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (kind, id, unit, window_start)
);
CREATE INDEX sending_counts_end ON sending_counts (window_end);
