-- Message bodies move out of messages (issue 12). A body is stored as
-- chunks of at most 8000 bytes kept in the row (STORAGE PLAIN: never
-- compressed, never moved to TOAST): a 10 KiB body is two rows and two
-- index entries instead of a messages row pointing at six TOAST chunks of
-- 2 KB with six TOAST index entries. Dropping a delivered body deletes its
-- chunks instead of writing a new version of the messages row. No foreign
-- key (its check would run per chunk): PruneMessages and DeleteMessage
-- delete the chunks of the messages they delete.
CREATE TABLE message_bodies (
	message_id text NOT NULL,
	seq        integer NOT NULL,
	chunk      bytea NOT NULL,
	PRIMARY KEY (message_id, seq)
);
ALTER TABLE message_bodies ALTER COLUMN chunk SET STORAGE PLAIN;

INSERT INTO message_bodies (message_id, seq, chunk)
	SELECT m.id, g.seq, substring(m.body FROM g.seq * 8000 + 1 FOR 8000)
	FROM messages m, generate_series(0, (octet_length(m.body) - 1) / 8000) AS g(seq)
	WHERE octet_length(m.body) > 0;

ALTER TABLE messages DROP COLUMN body;
