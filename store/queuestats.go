package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// Queue statistics and disk use that do not grow with the queue (issue 12).
//
// Stats reads recipients per state from queue_counts, which triggers keep
// in the transactions that insert, update or delete recipients (migration
// 0009): SQLite updates one row per state in place (it has one writer);
// PostgreSQL appends a delta row per statement, so concurrent gateway
// processes never wait for a counter row, and compactQueueCounts (run with
// PruneMessages) folds the deltas into one row per state. The oldest
// waiting message is the one of the earliest inserted waiting recipient,
// found through the partial index recipients_waiting (ids of queued and
// deferred recipients only): recipient ids grow with insertion, and a
// message is inserted with its recipients at its creation.
//
// A message's body is dropped (emptied) in the transaction in which its
// last recipient becomes final: relay retries never need it again, and the
// file no longer grows with throughput × relay.finished_retention. Its
// metadata, recipients and events stay for the retention as before. On
// SQLite the pages it held are reused by the next messages; new databases
// use auto_vacuum=INCREMENTAL, and PruneMessages gives free pages beyond a
// reserve back to the file system (sqliteVacuum).

// sqliteOldestWaiting and pgOldestWaiting read the creation time of the
// oldest waiting message.
const (
	sqliteOldestWaiting = `SELECT created_at FROM messages WHERE id =
		(SELECT message_id FROM recipients INDEXED BY recipients_waiting
			WHERE state IN ('queued', 'deferred') ORDER BY id LIMIT 1)`
	pgOldestWaiting = `SELECT created_at FROM messages WHERE id =
		(SELECT message_id FROM recipients WHERE state IN ('queued', 'deferred') ORDER BY id LIMIT 1)`
)

// finalRecipientIDs returns the ids of the recipients that ops make final,
// whose messages may have no waiting recipient left.
func finalRecipientIDs(ops []*finishOp) []int64 {
	var ids []int64
	for _, op := range ops {
		for _, o := range op.f.Outcomes {
			if o.State != StateQueued && o.State != StateDeferred {
				ids = append(ids, o.RecipientID)
			}
		}
	}
	return ids
}

// sqliteDropBodies empties the body of every message of the recipients
// whose ids are in the JSON array ?1 that has no recipient left that is not
// final.
const sqliteDropBodies = `UPDATE OR FAIL messages SET body = X''
	WHERE id IN (SELECT message_id FROM recipients WHERE id IN (SELECT value FROM json_each(?1)))
		AND length(body) > 0
		AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id
			AND r.state NOT IN ('delivered', 'bounced', 'expired'))`

// dropBodies empties, inside tx, the body of every message of the
// recipients ids that has no recipient left that is not final.
func (s *sqliteStore) dropBodies(ctx context.Context, tx *sql.Tx, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	st, err := s.txStmt(ctx, tx, sqliteDropBodies)
	if err == nil {
		_, err = st.ExecContext(ctx, jsonInts(ids))
		err = errors.Join(err, st.Close())
	}
	if err != nil {
		return fmt.Errorf("drop delivered bodies: %w", err)
	}
	return nil
}

// jsonInts is ids as a JSON array, for json_each.
func jsonInts(ids []int64) string {
	b := make([]byte, 0, 2+len(ids)*8)
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, id, 10)
	}
	return string(append(b, ']'))
}

// pgDropBodies is sqliteDropBodies for PostgreSQL ($1: recipient ids): it
// deletes the body's chunks (message_bodies, migration 0012). Two
// nodes finishing a message's last two recipients at the same moment may
// each still see the other's as waiting; that body then goes with the
// message at relay.finished_retention, as before.
const pgDropBodies = `DELETE FROM message_bodies b
	WHERE b.message_id IN (SELECT message_id FROM recipients WHERE id = ANY($1::bigint[]))
		AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = b.message_id
			AND r.state NOT IN ('delivered', 'bounced', 'expired'))`

// sqliteVacuumReserve is how many free pages SQLite keeps for the next
// messages; sqliteVacuumStep bounds the pages one PruneMessages returns to
// the file system (each is a short write transaction).
const (
	sqliteVacuumReserve = 2048
	sqliteVacuumStep    = 8192
)

// sqliteVacuum returns free pages beyond sqliteVacuumReserve to the file
// system, if the database uses auto_vacuum=INCREMENTAL (new databases do;
// an older file keeps reusing its free pages instead, see
// docs/operations.md to convert it).
func (s *sqliteStore) sqliteVacuum(ctx context.Context) error {
	var mode, free int64
	if err := s.w.QueryRowContext(ctx, `PRAGMA auto_vacuum`).Scan(&mode); err != nil {
		return sqliteErr("incremental vacuum", err)
	}
	if mode != 2 {
		return nil
	}
	if err := s.w.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free); err != nil {
		return sqliteErr("incremental vacuum", err)
	}
	if free <= sqliteVacuumReserve {
		return nil
	}
	n := min(free-sqliteVacuumReserve, sqliteVacuumStep)
	// incremental_vacuum returns no rows but must be stepped to the end.
	rows, err := s.w.QueryContext(ctx, fmt.Sprintf(`PRAGMA incremental_vacuum(%d)`, n))
	if err != nil {
		return sqliteErr("incremental vacuum", err)
	}
	for rows.Next() {
	}
	return sqliteErr("incremental vacuum", errors.Join(rows.Err(), rows.Close()))
}

// compactQueueCounts folds PostgreSQL's queue_counts deltas into one row
// per state. One statement: rows inserted meanwhile by other transactions
// are not in its snapshot and stay as they are.
func (s *pgStore) compactQueueCounts(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `WITH old AS (DELETE FROM queue_counts RETURNING state, n)
		INSERT INTO queue_counts (state, n) SELECT state, sum(n) FROM old GROUP BY state HAVING sum(n) <> 0`)
	return pgErr("compact queue counts", err)
}
