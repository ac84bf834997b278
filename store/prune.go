package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Queue maintenance: pruning finished messages and releasing leases.
//
// PruneMessages finds candidates through the partial index
// recipients_finished (migration 0003: updated_at of final recipients
// only), so each run reads the final recipients older than the cutoff that
// are still stored — about one run's worth in steady state, plus those of
// messages that still wait for another recipient — not the whole queue. The candidates are de-duplicated per message first; each message
// is then checked once, through recipients_message, for a recipient that is
// not final or finished after the cutoff. A message whose last recipient
// became final keeps every recipient final: Finish only changes leased
// (queued or deferred) recipients and RetryMessage only queued or deferred
// ones, so the check cannot go stale before the delete.
//
// The check is a scalar subquery rather than NOT EXISTS: PostgreSQL turns
// NOT EXISTS into an anti-join and, with many candidates, hashes the whole
// recipients table for it every run; the subquery is one index probe per
// candidate, and LIMIT stops the probing early.
//
// ReleaseLeases has no index of its own: it reads the queued and deferred
// recipients, once per relay start or stop.

// pruneCandidates is the shared query selecting up to limit prunable
// message ids; %[1]s is the cutoff placeholder, %[2]s the limit placeholder
// and %[3]s an index hint (SQLite's planner, without statistics, would
// rather read every final recipient through recipients_due).
const pruneCandidates = `SELECT c.message_id FROM (
		SELECT DISTINCT message_id FROM recipients %[3]s
		WHERE state IN ('delivered', 'bounced', 'expired') AND updated_at < %[1]s) c
	WHERE (SELECT count(*) FROM recipients o WHERE o.message_id = c.message_id
		AND (o.state NOT IN ('delivered', 'bounced', 'expired') OR o.updated_at >= %[1]s)) = 0
	LIMIT %[2]s`

// checkPruneLimit rejects a limit that would delete nothing or everything.
func checkPruneLimit(limit int) error {
	if limit <= 0 {
		return fmt.Errorf("prune messages: limit %d: need a positive limit", limit)
	}
	return nil
}

// PruneMessages implements Store. Recipients go with their message (the
// trigger messages_delete_recipients, migration 0015).
func (s *sqliteStore) PruneMessages(ctx context.Context, finishedBefore time.Time, limit int) (int64, error) {
	if err := checkPruneLimit(limit); err != nil {
		return 0, err
	}
	var n int64
	err := s.inTx(ctx, "prune messages", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE id IN (`+
			fmt.Sprintf(pruneCandidates, "?1", "?2", "INDEXED BY recipients_finished")+`)`, us(finishedBefore), limit)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, s.sqliteVacuum(ctx)
}

// ReleaseLeases implements Store.
func (s *sqliteStore) ReleaseLeases(ctx context.Context, owner string) (int64, error) {
	return s.updateAndWake(ctx, "release leases", func(tx *sql.Tx) (sql.Result, error) {
		return tx.ExecContext(ctx, `UPDATE recipients SET lease_owner = NULL, lease_until = NULL
			WHERE state IN ('queued', 'deferred') AND lease_owner IS NOT NULL
				AND (?1 = '' OR lease_owner = ?1)`, owner)
	})
}

// PruneMessages implements Store. The messages are locked with SKIP
// LOCKED, so nodes pruning at the same time share the work instead of
// waiting for (or deadlocking on) each other's rows.
func (s *pgStore) PruneMessages(ctx context.Context, finishedBefore time.Time, limit int) (int64, error) {
	if err := checkPruneLimit(limit); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, `WITH done AS (
			SELECT id FROM messages WHERE id IN (`+fmt.Sprintf(pruneCandidates, "$1", "$2", "")+`)
			FOR UPDATE SKIP LOCKED),
		bodies AS (DELETE FROM message_bodies b USING done WHERE b.message_id = done.id),
		rcpts AS (DELETE FROM recipients r USING done WHERE r.message_id = done.id)
		DELETE FROM messages m USING done WHERE m.id = done.id`, utc(finishedBefore), limit)
	if err != nil {
		return 0, pgErr("prune messages", err)
	}
	return tag.RowsAffected(), s.compactQueueCounts(ctx)
}

// ReleaseLeases implements Store. Other nodes are woken by NOTIFY, as
// after Enqueue.
func (s *pgStore) ReleaseLeases(ctx context.Context, owner string) (int64, error) {
	return s.updateAndWake(ctx, "release leases", func(tx pgx.Tx) (int64, error) {
		tag, err := tx.Exec(ctx, `UPDATE recipients SET lease_owner = NULL, lease_until = NULL
			WHERE state IN ('queued', 'deferred') AND lease_owner IS NOT NULL
				AND ($1 = '' OR lease_owner = $1)`, owner)
		return tag.RowsAffected(), err
	})
}
