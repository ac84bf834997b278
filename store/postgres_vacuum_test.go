package store

import (
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
