-- Queue statistics without reading the queue (issue 12): recipients per
-- state are counted by triggers in the transaction that changes them, and
-- the oldest waiting message is found through a small partial index of the
-- waiting (queued and deferred) recipients, so `queue stats` and every
-- /metrics scrape cost the same with ten or a million queued recipients.

CREATE TABLE queue_counts (
	state TEXT PRIMARY KEY,
	n     INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO queue_counts (state, n) SELECT state, count(*) FROM recipients GROUP BY state;

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients BEGIN
	INSERT INTO queue_counts (state, n) VALUES (NEW.state, 1)
		ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients BEGIN
	UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
END;

CREATE TRIGGER recipients_count_update AFTER UPDATE OF state ON recipients
	WHEN OLD.state <> NEW.state BEGIN
	UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
	INSERT INTO queue_counts (state, n) VALUES (NEW.state, 1)
		ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE INDEX recipients_waiting ON recipients (id) WHERE state IN ('queued', 'deferred');
