package store

import (
	"maps"
	"reflect"
	"testing"
	"time"
)

// sqliteSchema0014 undoes migration 0015: recipients with their foreign key
// to messages and the upserting count triggers, as migrations 0001-0014
// left them.
const sqliteSchema0014 = `
DROP TRIGGER messages_delete_recipients;
CREATE TABLE recipients_old (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
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
INSERT INTO sqlite_sequence (name, seq) SELECT 'recipients_old', seq FROM sqlite_sequence WHERE name = 'recipients';
INSERT INTO recipients_old SELECT * FROM recipients;
DROP TABLE recipients;
ALTER TABLE recipients_old RENAME TO recipients;
CREATE INDEX recipients_due ON recipients (state, next_attempt);
CREATE INDEX recipients_message ON recipients (message_id);
CREATE INDEX recipients_finished ON recipients (updated_at) WHERE state IN ('delivered', 'bounced', 'expired');
CREATE INDEX recipients_waiting ON recipients (id) WHERE state IN ('queued', 'deferred');
CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients BEGIN
	INSERT INTO queue_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients BEGIN
	UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER recipients_count_update AFTER UPDATE OF state ON recipients WHEN OLD.state <> NEW.state BEGIN
	UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state;
	INSERT INTO queue_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
DELETE FROM schema_migrations WHERE version = 15;`

// TestSQLiteMigration0015 runs migration 0015 on a queue written before it:
// every recipient keeps its id and fields, ids are not given out again,
// the counts stay right, and deleting or pruning a message still deletes
// its recipients (a trigger instead of ON DELETE CASCADE).
func TestSQLiteMigration0015(t *testing.T) {
	e := openEnv(t, "sqlite")
	s := e.s.(*sqliteStore)
	ctx := ctxT(t)
	for range 3 {
		mustEnqueue(t, s, newMsg(2))
	}
	cs := claimEvery(t, s, "w1")
	finishEach(t, s, "w1", cs[:2], StateDelivered)
	// The newest message goes: its recipients had the highest ids.
	last := newMsg(2)
	mustEnqueue(t, s, last)
	if err := s.DeleteMessage(ctx, last.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, sqliteSchema0014); err != nil {
		t.Fatalf("undo migration 0015: %v", err)
	}
	type row struct {
		ID                                           int64
		MessageID, Address, State, LastReply, Owner  string
		Attempts, NextAttempt, UpdatedAt, LeaseUntil int64
	}
	rows := func() []row {
		t.Helper()
		rs, err := s.w.QueryContext(ctx, `SELECT id, message_id, address, state, last_reply,
			coalesce(lease_owner, ''), attempts, next_attempt, updated_at, coalesce(lease_until, 0)
			FROM recipients ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out []row
		for rs.Next() {
			var r row
			if err := rs.Scan(&r.ID, &r.MessageID, &r.Address, &r.State, &r.LastReply, &r.Owner,
				&r.Attempts, &r.NextAttempt, &r.UpdatedAt, &r.LeaseUntil); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := rows()
	statsBefore, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if after := rows(); len(before) != 6 || !reflect.DeepEqual(after, before) {
		t.Fatalf("recipients before the migration\n%v\nafter\n%v", before, after)
	}
	var fks int
	if err := s.w.QueryRowContext(ctx, `SELECT count(*) FROM pragma_foreign_key_list('recipients')`).Scan(&fks); err != nil || fks != 0 {
		t.Errorf("recipients has %d foreign keys (%v), want none", fks, err)
	}
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(st.ByState, statsBefore.ByState) || !maps.Equal(st.ByState, countByState(t, e)) {
		t.Errorf("stats %v after the migration, %v before, the table %v", st.ByState, statsBefore.ByState, countByState(t, e))
	}

	m := newMsg(1)
	mustEnqueue(t, s, m)
	if id := m.Recipients[0].ID; id <= last.Recipients[1].ID {
		t.Errorf("new recipient id %d, want above the deleted %d", id, last.Recipients[1].ID)
	}
	if err := s.DeleteMessage(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	orphans := func(step string) {
		t.Helper()
		var n int
		if err := s.w.QueryRowContext(ctx, `SELECT count(*) FROM recipients
			WHERE message_id NOT IN (SELECT id FROM messages)`).Scan(&n); err != nil || n != 0 {
			t.Errorf("after %s: %d recipients without their message (%v)", step, n, err)
		}
	}
	orphans("delete")
	finishEach(t, s, "w1", cs[2:], StateDelivered) // leased before the migration
	if n, err := s.PruneMessages(ctx, time.Now().Add(time.Hour), 100); err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3", n, err)
	}
	orphans("prune")
	if st, err := s.Stats(ctx); err != nil || !maps.Equal(st.ByState, countByState(t, e)) || len(countByState(t, e)) != 0 {
		t.Errorf("stats %v (%v) after the prune, the table %v; want both empty", st.ByState, err, countByState(t, e))
	}
}
