package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Vacuuming dropped bodies (PostgreSQL).
//
// A body stays in message_bodies until its message's last recipient is
// final; then the group committer deletes it. PostgreSQL reuses the space
// of deleted rows only once VACUUM has seen them, and autovacuum visits a
// table at most once a minute (autovacuum_naptime): at 1,500 msg/s the
// table grew by about a gigabyte of dead rows between visits, every page
// of it new, so PostgreSQL evicted them from its buffers into the kernel's
// page cache, which wrote them back in bursts that held the commits' WAL
// flushes. The store therefore vacuums message_bodies itself, at most
// every pgVacuumBodiesEvery and once pgVacuumBodiesAfter recipients were
// made final since the last time: the next bodies reuse pages still in
// PostgreSQL's buffers, and the table stays the size of the undelivered
// queue plus a few seconds of traffic. It runs on a pooled connection,
// beside the committer, never inside its transactions; SKIP_LOCKED makes
// it step aside when another node (or autovacuum) is vacuuming the table.
// Only the table's owner (or a member of the owning role, or a superuser)
// may vacuum it; PostgreSQL answers anyone else with a warning in its own
// log, which every 2 s would flood it. So the first time, the store asks
// whether its role may, and if not it logs that once and leaves the table
// to autovacuum, as before.
const (
	pgVacuumBodiesEvery = 2 * time.Second
	pgVacuumBodiesAfter = 256
	// pgVacuumTimeout bounds one VACUUM; the next one starts over.
	pgVacuumTimeout = time.Minute
)

// pgMayVacuumBodies tells whether the current role may vacuum
// message_bodies (it owns it, is a member of the role that does, or is a
// superuser, for which pg_has_role is always true), and the role's name.
const pgMayVacuumBodies = `SELECT pg_has_role(current_user, c.relowner, 'MEMBER'), current_user::text
	FROM pg_class c WHERE c.oid = 'message_bodies'::regclass`

// bodyVacuum schedules the VACUUMs of message_bodies.
type bodyVacuum struct {
	every time.Duration // pgVacuumBodiesEvery (tests shorten it)
	after int64         // pgVacuumBodiesAfter (tests lower it)

	finals  atomic.Int64 // recipients made final since the last VACUUM began
	checked bool         // whether the role's right to vacuum was asked (by the one running VACUUM)
	off     atomic.Bool  // the role may not vacuum message_bodies
	last    atomic.Int64 // when the last VACUUM began (unix ns)
	running atomic.Bool
	runs    atomic.Int64 // VACUUMs that completed

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newBodyVacuum() *bodyVacuum {
	ctx, cancel := context.WithCancel(context.Background())
	return &bodyVacuum{every: pgVacuumBodiesEvery, after: pgVacuumBodiesAfter, ctx: ctx, cancel: cancel}
}

// finalized is told, after a commit, how many recipients it made final. It
// starts a VACUUM in the background when one is due and none is running.
// It is called by the group committer only, so none starts after stop.
func (s *pgStore) finalized(n int) {
	v := s.vac
	if n <= 0 || v.off.Load() || v.finals.Add(int64(n)) < v.after ||
		time.Since(time.Unix(0, v.last.Load())) < v.every || !v.running.CompareAndSwap(false, true) {
		return
	}
	v.finals.Store(0)
	v.last.Store(time.Now().UnixNano())
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		defer v.running.Store(false)
		ctx, cancel := context.WithTimeout(v.ctx, pgVacuumTimeout)
		defer cancel()
		if !v.checked {
			var may bool
			var role string
			if err := s.pool.QueryRow(ctx, pgMayVacuumBodies).Scan(&may, &role); err != nil {
				if v.ctx.Err() == nil {
					s.log.Warn("vacuum of delivered bodies: cannot tell whether this role may vacuum message_bodies; will ask again", "err", err)
				}
				return
			}
			v.checked = true
			if !may {
				v.off.Store(true)
				s.log.Info("not vacuuming message_bodies: this role does not own it; autovacuum reclaims the space of delivered bodies, once a minute at most (docs/storage.md)",
					"role", role)
				return
			}
		}
		// VACUUM cannot run in a transaction: the simple protocol sends it
		// alone.
		_, err := s.pool.Exec(ctx, `VACUUM (SKIP_LOCKED) message_bodies`, pgx.QueryExecModeSimpleProtocol)
		switch {
		case err == nil:
			v.runs.Add(1)
		case v.ctx.Err() == nil:
			s.log.Warn("vacuum of delivered bodies failed; autovacuum will reclaim their space later", "err", err)
		}
	}()
}

// stop cancels a VACUUM in progress and waits for it to return.
func (v *bodyVacuum) stop() {
	v.cancel()
	v.wg.Wait()
}
