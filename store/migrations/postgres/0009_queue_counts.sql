-- Queue statistics without reading the queue (issue 12): recipients per
-- state are counted by statement triggers in the transaction that changes
-- them, and the oldest waiting message is found through a small partial
-- index of the waiting (queued and deferred) recipients, so `queue stats`
-- and every /metrics scrape cost the same with ten or a million queued
-- recipients.
--
-- Counts are appended as deltas, never updated in place: concurrent
-- transactions (several gateway processes) never wait for, or deadlock on,
-- a counter row. Stats sums the deltas; CompactQueueCounts (run with the
-- queue maintenance) folds them into one row per state.

CREATE TABLE queue_counts (
	state text NOT NULL,
	n     bigint NOT NULL
);

INSERT INTO queue_counts (state, n) SELECT state, count(*) FROM recipients GROUP BY state;

CREATE FUNCTION queue_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO queue_counts (state, n) SELECT state, count(*) FROM new_rows GROUP BY state;
	RETURN NULL;
END $$;

CREATE FUNCTION queue_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO queue_counts (state, n) SELECT state, -count(*) FROM old_rows GROUP BY state;
	RETURN NULL;
END $$;

CREATE FUNCTION queue_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO queue_counts (state, n)
		SELECT state, sum(n) FROM (
			SELECT state, count(*) AS n FROM new_rows GROUP BY state
			UNION ALL
			SELECT state, -count(*) FROM old_rows GROUP BY state) d
		GROUP BY state HAVING sum(n) <> 0;
	RETURN NULL;
END $$;

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients
	REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_insert();
CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients
	REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_delete();
CREATE TRIGGER recipients_count_update AFTER UPDATE ON recipients
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_update();

CREATE INDEX recipients_waiting ON recipients (id) WHERE state IN ('queued', 'deferred');

-- A 10 KiB body gains little from compression and costs CPU to compress:
-- store bodies out of line, uncompressed.
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;
