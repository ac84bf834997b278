package store

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

// TestMessageSize: the size of a message is stored at Enqueue and read back
// by ListMessages (which loads no body) and GetMessage.
func TestMessageSize(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		big := newMsg(1)
		big.Body = bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
		empty := newMsg(1)
		empty.Body = nil
		mustEnqueue(t, e.s, big)
		mustEnqueue(t, e.s, empty)
		if big.Size != 65536 || empty.Size != 0 {
			t.Errorf("Enqueue set sizes %d and %d, want 65536 and 0", big.Size, empty.Size)
		}
		ms, err := e.s.ListMessages(ctx, QueueFilter{})
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		got := map[string]*Message{}
		for _, m := range ms {
			got[m.ID] = m
		}
		for _, want := range []*Message{big, empty} {
			m := got[want.ID]
			if m == nil {
				t.Fatalf("list lacks %s", want.ID)
			}
			if m.Body != nil {
				t.Errorf("list loaded the body of %s", m.ID)
			}
			if m.Size != int64(len(want.Body)) {
				t.Errorf("list: size of %s is %d, want %d", m.ID, m.Size, len(want.Body))
			}
			g, err := e.s.GetMessage(ctx, want.ID)
			if err != nil {
				t.Fatalf("get %s: %v", want.ID, err)
			}
			if g.Size != int64(len(want.Body)) || g.Size != int64(len(g.Body)) {
				t.Errorf("get: size of %s is %d with a %d-byte body, want %d", g.ID, g.Size, len(g.Body), len(want.Body))
			}
		}
	})
}

// TestMigrationBackfillsSize runs migration 0002 on a database whose
// messages were written before it: their size must be their body's length.
func TestMigrationBackfillsSize(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m := newMsg(2)
		m.Body = bytes.Repeat([]byte("x"), 12345)
		mustEnqueue(t, e.s, m)
		// Back to the 0001 schema: no size column, version 2 not applied.
		var err error
		switch s := e.s.(type) {
		case *sqliteStore:
			_, err = s.w.ExecContext(ctx, `ALTER TABLE messages DROP COLUMN size;
				DELETE FROM schema_migrations WHERE version = 2`)
		case *pgStore:
			// Bodies were in messages then (migration 0012 moved them).
			_, err = s.pool.Exec(ctx, `ALTER TABLE messages DROP COLUMN size;
				ALTER TABLE messages ADD COLUMN body bytea NOT NULL DEFAULT ''::bytea;
				UPDATE messages m SET body = `+pgBodyExpr+`;
				DELETE FROM schema_migrations WHERE version = 2`)
		}
		if err != nil {
			t.Fatalf("undo migration 0002: %v", err)
		}
		if err := e.s.Migrate(ctx); err != nil {
			t.Fatalf("migrate: %v", err)
		}
		ms, err := e.s.ListMessages(ctx, QueueFilter{})
		if err != nil || len(ms) != 1 {
			t.Fatalf("list: %d messages, %v", len(ms), err)
		}
		if ms[0].Size != 12345 {
			t.Errorf("backfilled size %d, want 12345", ms[0].Size)
		}
	})
}

// TestClaimedMsysAPI: ClaimDue hands the relay the X-MSYS-API header, and
// MsysEventFields gives the metadata and tags the injection events carry.
func TestClaimedMsysAPI(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		with := newMsg(2)
		without := newMsg(1)
		without.MsysAPI = nil
		mustEnqueue(t, e.s, with)
		mustEnqueue(t, e.s, without)
		cs, err := e.s.ClaimDue(ctx, "w1", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(cs) != 3 {
			t.Fatalf("claimed %d, %v", len(cs), err)
		}
		evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: with.ID, Types: []string{EventInjection}})
		if err != nil || len(evs) != 2 {
			t.Fatalf("injection events: %d, %v", len(evs), err)
		}
		for _, c := range cs {
			meta, tags := MsysEventFields(c.MsysAPI)
			switch c.MessageID {
			case with.ID:
				if !jsonEqual(c.MsysAPI, string(with.MsysAPI)) {
					t.Errorf("claimed MsysAPI %s, want %s", c.MsysAPI, with.MsysAPI)
				}
				if !jsonEqual(meta, string(evs[0].Metadata)) || !reflect.DeepEqual(tags, evs[0].Tags) {
					t.Errorf("claimed metadata %s tags %q; injection event has %s %q", meta, tags, evs[0].Metadata, evs[0].Tags)
				}
				if !jsonEqual(meta, `{"user":"u1","n":2}`) || !reflect.DeepEqual(tags, []string{"a", "b"}) {
					t.Errorf("metadata %s tags %q", meta, tags)
				}
			case without.ID:
				if c.MsysAPI != nil || meta != nil || tags != nil {
					t.Errorf("message without header: MsysAPI %s metadata %s tags %q", c.MsysAPI, meta, tags)
				}
			}
		}
	})
}

// TestMigrationMovesBodies runs migration 0012 on a PostgreSQL database
// whose bodies are still in messages: every body (several chunks, exactly
// one chunk, none) reads back the same after it.
func TestMigrationMovesBodies(t *testing.T) {
	e := openEnv(t, "postgres")
	ctx := ctxT(t)
	s := e.s.(*pgStore)
	bodies := map[string][]byte{}
	for _, n := range []int{2*pgBodyChunk + 123, pgBodyChunk, 1, 0} {
		m := newMsg(1)
		m.Body = bytes.Repeat([]byte{byte('a' + n%26)}, n)
		for i := range m.Body {
			m.Body[i] += byte(i % 7)
		}
		mustEnqueue(t, e.s, m)
		bodies[m.ID] = m.Body
	}
	// Back to the schema before 0012: bodies in messages.
	if _, err := s.pool.Exec(ctx, `ALTER TABLE messages ADD COLUMN body bytea NOT NULL DEFAULT ''::bytea;
		UPDATE messages m SET body = `+pgBodyExpr+`;
		DROP TABLE message_bodies;
		DELETE FROM schema_migrations WHERE version = 12`); err != nil {
		t.Fatalf("undo migration 0012: %v", err)
	}
	if err := e.s.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	for id, want := range bodies {
		got, err := e.s.MessageBody(ctx, id)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("body of %s after the migration: %d bytes, %v; want %d bytes", id, len(got), err, len(want))
		}
	}
	var chunks int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM message_bodies`).Scan(&chunks); err != nil || chunks != 3+1+1 {
		t.Errorf("%d chunks, %v; want 5", chunks, err)
	}
}
