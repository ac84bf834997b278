package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"testing"
	"time"
)

// TestPGVacuumsDroppedBodies: once enough recipients are final, the store
// vacuums message_bodies itself, in the background, at most once per
// interval (PostgreSQL's statistics count the VACUUM).
func TestPGVacuumsDroppedBodies(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "postgres")
	ctx := ctxT(t)
	pg := e.s.(*pgStore)
	pg.vac.after, pg.vac.every = 3, time.Hour

	finish := func(cs []*Claimed) {
		t.Helper()
		for _, c := range cs {
			if _, err := e.s.Finish(ctx, "w1", finishDelivered(c)); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Two final recipients: below the threshold, no VACUUM.
	finish(claimN(t, e.s, 2))
	if pg.vac.runs.Load() != 0 || pg.vac.running.Load() {
		t.Fatalf("a VACUUM started after 2 final recipients, want none before %d", pg.vac.after)
	}
	// The third crosses it.
	finish(claimN(t, e.s, 1))
	deadline := time.Now().Add(10 * time.Second)
	for pg.vac.runs.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no VACUUM of message_bodies 10 s after 3 recipients were final")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var n int64
	if err := pg.pool.QueryRow(ctx, `SELECT vacuum_count FROM pg_stat_user_tables
		WHERE schemaname = current_schema() AND relname = 'message_bodies'`).Scan(&n); err != nil || n < 1 {
		t.Errorf("message_bodies vacuumed %d times (%v), want at least once", n, err)
	}
	// Within the interval (an hour here), more final recipients start
	// none: the committer decides before it answers Finish.
	finish(claimN(t, e.s, 3))
	if got := pg.vac.runs.Load(); got != 1 || pg.vac.running.Load() {
		t.Errorf("%d VACUUMs (running: %v) within the interval, want 1", got, pg.vac.running.Load())
	}
}

// TestPGVacuumNotOwner: a gateway connecting as a role that does not own
// message_bodies asks once whether it may vacuum it, and when it may not,
// stops trying (PostgreSQL would log a warning for every attempt) and
// leaves the table to autovacuum; its mail goes through as before.
func TestPGVacuumNotOwner(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "postgres") // migrated by the owner
	ctx := ctxT(t)
	owner := e.s.(*pgStore)
	var b [6]byte
	_, _ = rand.Read(b[:])
	role := "smtpgw_test_writer_" + hex.EncodeToString(b[:])
	var schema string
	if err := owner.pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`GRANT USAGE ON SCHEMA ` + schema + ` TO ` + role,
		`GRANT ALL ON ALL TABLES IN SCHEMA ` + schema + ` TO ` + role,
		`GRANT ALL ON ALL SEQUENCES IN SCHEMA ` + schema + ` TO ` + role,
	} {
		if _, err := owner.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { // after the writer's store closed (cleanups run last first)
		for _, q := range []string{`DROP OWNED BY ` + role, `DROP ROLE ` + role} {
			if _, err := owner.pool.Exec(context.Background(), q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	u, err := url.Parse(e.url)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	s, err := Open(ctx, u.String(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	writer := s.(*pgStore)
	writer.vac.after, writer.vac.every = 1, 0

	for _, c := range claimN(t, s, 2) {
		if _, err := s.Finish(ctx, "w1", finishDelivered(c)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !writer.vac.off.Load() {
		if time.Now().After(deadline) {
			t.Fatal("a role that does not own message_bodies still tries to vacuum it 10 s after two final recipients")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var n int64
	if err := owner.pool.QueryRow(ctx, `SELECT vacuum_count FROM pg_stat_user_tables
		WHERE schemaname = current_schema() AND relname = 'message_bodies'`).Scan(&n); err != nil || n != 0 || writer.vac.runs.Load() != 0 {
		t.Errorf("message_bodies vacuumed %d times (%v; the store counts %d), want none", n, err, writer.vac.runs.Load())
	}
	// Its mail still goes through.
	for _, c := range claimN(t, s, 1) {
		if _, err := s.Finish(ctx, "w1", finishDelivered(c)); err != nil {
			t.Fatal(err)
		}
	}
}
