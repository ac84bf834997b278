-- Writing a recipient opened a statement journal (issue 12): SQLite keeps
-- a copy of every page a statement changes, so that the statement alone
-- can be undone, whenever the statement writes more than one row (the
-- queue_counts triggers) and may abort halfway (the foreign key to
-- messages, the upsert in the triggers, NOT NULL checks). Every recipient
-- inserted and every outcome paid for that copy, and the foreign key cost
-- a lookup of the message per recipient. The hot statements now say OR FAIL
-- (a failure fails the whole batch, which is rolled back, so no statement
-- needs undoing alone), which needs the triggers without an upsert (its
-- DO UPDATE always aborts), and recipients lose the foreign key (as on
-- PostgreSQL, its migration 0014): a trigger on messages deletes a deleted
-- message's recipients, as ON DELETE CASCADE did. SQLite cannot drop a
-- constraint, so the table is built again, with its rows, ids and
-- AUTOINCREMENT sequence.

CREATE TABLE recipients_new (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id   TEXT NOT NULL,
	address      TEXT NOT NULL,
	domain       TEXT NOT NULL DEFAULT '',
	state        TEXT NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	next_attempt INTEGER NOT NULL,
	last_reply   TEXT NOT NULL DEFAULT '',
	dsn_notify   TEXT NOT NULL DEFAULT '',
	dsn_orcpt    TEXT NOT NULL DEFAULT '',
	lease_owner  TEXT,
	lease_until  INTEGER,
	updated_at   INTEGER NOT NULL
);

-- The sequence first, so that ids of recipients deleted at the top are
-- not given out again.
INSERT INTO sqlite_sequence (name, seq)
	SELECT 'recipients_new', seq FROM sqlite_sequence WHERE name = 'recipients';

INSERT INTO recipients_new (id, message_id, address, domain, state, attempts, next_attempt,
		last_reply, dsn_notify, dsn_orcpt, lease_owner, lease_until, updated_at)
	SELECT id, message_id, address, domain, state, attempts, next_attempt,
		last_reply, dsn_notify, dsn_orcpt, lease_owner, lease_until, updated_at
	FROM recipients;

-- Dropping the table drops its indexes and triggers, and its delete
-- trigger does not fire; queue_counts stays as it is, and right.
DROP TABLE recipients;
ALTER TABLE recipients_new RENAME TO recipients;

CREATE INDEX recipients_due ON recipients (state, next_attempt);
CREATE INDEX recipients_message ON recipients (message_id);
CREATE INDEX recipients_finished ON recipients (updated_at)
	WHERE state IN ('delivered', 'bounced', 'expired');
CREATE INDEX recipients_waiting ON recipients (id) WHERE state IN ('queued', 'deferred');

-- Counting without an upsert: the row of a state is made (at 0) when it is
-- missing, then incremented.
CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients BEGIN
	INSERT INTO queue_counts (state, n) SELECT NEW.state, 0
		WHERE NOT EXISTS (SELECT 1 FROM queue_counts WHERE state = NEW.state);
	UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state;
END;

CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients BEGIN
	UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
END;

CREATE TRIGGER recipients_count_update AFTER UPDATE OF state ON recipients
	WHEN OLD.state <> NEW.state BEGIN
	UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
	INSERT INTO queue_counts (state, n) SELECT NEW.state, 0
		WHERE NOT EXISTS (SELECT 1 FROM queue_counts WHERE state = NEW.state);
	UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state;
END;

-- What ON DELETE CASCADE did (PruneMessages, DeleteMessage); the count
-- trigger above fires for each recipient deleted.
CREATE TRIGGER messages_delete_recipients AFTER DELETE ON messages BEGIN
	DELETE FROM recipients WHERE message_id = OLD.id;
END;
