package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Commits whose outcome is unknown (PostgreSQL).
//
// A group-commit batch may fail after its COMMIT was sent: the server froze
// (SIGSTOP, a stalled disk), the network broke, or the batch deadline
// passed while the server was still committing. The transaction may then
// have committed or not, and answering 451 for a message that is stored
// makes the client send it twice. So every batch transaction learns its
// transaction id first (txid_current()); when the COMMIT's answer is lost,
// [pgStore.resolveCommit] asks txid_status() once the database answers
// again, retrying with backoff for up to OutcomeWait, and reports what
// really happened: committed (success), aborted (ErrUnavailable: nothing
// stored), or — only if the database never answered in that time —
// ErrOutcomeUnknown.
//
// SQLite needs none of this: its COMMIT runs in this process, and an error
// from it means the transaction was rolled back.

// OutcomeWait bounds how long a batch whose COMMIT went unanswered waits
// for the database to say whether it committed. It is below the 10 minutes
// RFC 5321 §4.5.3.2.6 gives an SMTP client to wait for the reply to the end
// of DATA, so a client kept waiting meanwhile still gets an answer.
var OutcomeWait = 4 * time.Minute

// outcomeQueryTimeout bounds one txid_status lookup.
const outcomeQueryTimeout = 5 * time.Second

// ErrOutcomeUnknown: a write's COMMIT was sent but whether it committed
// could not be learned within OutcomeWait. It does not match
// ErrUnavailable: the data may be stored. An SMTP server must not answer
// 4xx (nor 2xx) for it; smtpd closes the connection without a reply, which
// a client treats as a temporary failure it may retry (RFC 5321 §4.1.1.4),
// the one place a duplicate can arise at injection.
var ErrOutcomeUnknown = errors.New("outcome of commit unknown")

// pgTx is what a group-commit transaction's statements are sent through:
// a connection inside the transaction (pgCommitTx), or a pgx.Tx.
type pgTx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// pgBatchTxStart follows BEGIN in every group-commit transaction: it learns
// the transaction id and, for this transaction only, keeps the planner to
// index-driven plans. The batch statements (the Finish UPDATE joined to
// unnest(...), the body drop) touch a handful of rows by key, and pgx
// prepares them once per connection: after five executions PostgreSQL
// caches a generic plan, costed with the table sizes of that moment. A
// gateway starting on a new or emptied queue would cache hash joins over
// sequential scans of recipients and messages and keep them, each batch
// reading the whole queue, until autovacuum's next ANALYZE of the table;
// with sequential scans, hash and merge joins off, the plan is index
// lookups whatever the statistics say (issue 12).
//
// JIT compilation is off too: PostgreSQL compiles a statement whose
// estimated cost passes jit_above_cost, and the estimates grow with the
// tables' dead rows until they are vacuumed. Thirty seconds into a run at
// 1,000 msg/s the body drop's estimate passed it and every execution,
// which touches a few dozen rows, spent 6-9 ms compiling itself: that one
// statement then cost PostgreSQL more CPU than all the others together
// (docs/benchmarks.md). A statement of a few index lookups gains nothing
// from compiling.
const pgBatchTxStart = `SELECT txid_current(), set_config('enable_seqscan', 'off', true)
	|| set_config('enable_hashjoin', 'off', true) || set_config('enable_mergejoin', 'off', true)
	|| set_config('jit', 'off', true)`

// pgTxStart is the first batch of a group-commit transaction: BEGIN, then
// pgBatchTxStart. The batch writer queues its own statements after them and
// sends it with send, so beginning the transaction and learning its id cost
// no round trip of their own: a transaction is this batch and its COMMIT.
type pgTxStart struct {
	pgx.Batch
	xid  int64
	sent bool
}

// newPGTxStart returns the start of a transaction, to which the writer
// adds its statements.
func newPGTxStart() *pgTxStart {
	st := &pgTxStart{}
	st.Queue(`BEGIN`)
	st.Queue(pgBatchTxStart)
	return st
}

// send sends the batch on tx and reads BEGIN's result and the transaction
// id. The caller reads the results of its own statements from br, then
// closes it.
func (st *pgTxStart) send(ctx context.Context, tx pgTx) (pgx.BatchResults, error) {
	st.sent = true
	br := tx.SendBatch(ctx, &st.Batch)
	if _, err := br.Exec(); err != nil {
		return nil, errors.Join(err, br.Close())
	}
	var planner string
	if err := br.QueryRow().Scan(&st.xid, &planner); err != nil {
		return nil, errors.Join(err, br.Close())
	}
	return br, nil
}

// pgCommitTx runs fn in a transaction and commits it, like inTx, but in as
// few round trips as it can: the transaction begins with fn's first batch
// (st, which fn sends before anything else; if fn sends nothing,
// pgCommitTx sends it before the COMMIT), and it learns the transaction id
// there, so that a COMMIT whose answer is lost is resolved (see
// resolveCommit) instead of reported as a failure.
func (s *pgStore) pgCommitTx(ctx context.Context, op string, fn func(tx pgTx, st *pgTxStart) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return pgErr(op, err)
	}
	// A connection left inside a transaction (its ROLLBACK failed) is
	// closed by the pool, not handed out again.
	defer conn.Release()
	st := newPGTxStart()
	fail := func(err error) error {
		if st.sent {
			err = errors.Join(err, rollback(conn))
		}
		return pgErr(op, err)
	}
	if err := fn(conn, st); err != nil {
		return fail(err)
	}
	if !st.sent {
		br, err := st.send(ctx, conn)
		if err == nil {
			err = br.Close()
		}
		if err != nil {
			return fail(err)
		}
	}
	xid := st.xid
	tag, err := conn.Exec(ctx, "COMMIT")
	if err == nil {
		if tag.String() != "COMMIT" {
			// The transaction had failed: COMMIT rolled it back.
			return pgErr(op, pgx.ErrTxCommitRollback)
		}
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) || pgconn.SafeToRetry(err) {
		// The server answered the COMMIT with an error, or the COMMIT was
		// never sent: not committed.
		return pgErr(op, err)
	}
	return s.resolveCommit(op, xid, err)
}

// rollback rolls back the transaction tx is in, with a short deadline of
// its own (the caller's context may be what failed).
func rollback(tx pgTx) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := tx.Exec(ctx, "ROLLBACK"); err != nil && !pgUnreachable(err) {
		return err
	}
	return nil
}

// resolveCommit finds out whether transaction xid, whose COMMIT failed with
// cause, committed: nil if it did, an ErrUnavailable error if it was rolled
// back, ErrOutcomeUnknown if the database did not tell within OutcomeWait.
func (s *pgStore) resolveCommit(op string, xid int64, cause error) error {
	s.log.Warn("commit answer lost: asking the database whether it committed", "op", op, "xid", xid, "err", cause)
	deadline := time.Now().Add(OutcomeWait)
	backoff := 50 * time.Millisecond
	for {
		status, err := s.txidStatus(xid)
		switch {
		case err == nil && status == "committed":
			s.log.Warn("commit answer lost, but the transaction committed", "op", op, "xid", xid)
			return nil
		case err == nil && status == "aborted":
			s.log.Warn("commit answer lost; the transaction was rolled back", "op", op, "xid", xid)
			return fmt.Errorf("%s: %w: rolled back after: %w", op, ErrUnavailable, cause)
		}
		// "in progress" (the old session has not finished the COMMIT yet)
		// or the database does not answer: ask again.
		if time.Now().Add(backoff).After(deadline) {
			s.log.Error("commit outcome unknown: the database did not answer in time", "op", op, "xid", xid,
				"waited", OutcomeWait.String(), "err", err)
			return fmt.Errorf("%s: %w after %s: %w", op, ErrOutcomeUnknown, OutcomeWait, cause)
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 2*time.Second)
	}
}

// txidStatus returns txid_status(xid): "committed", "aborted" or
// "in progress".
func (s *pgStore) txidStatus(xid int64) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), outcomeQueryTimeout)
	defer cancel()
	var status *string
	if err := s.pool.QueryRow(ctx, `SELECT txid_status($1)`, xid).Scan(&status); err != nil {
		return "", err
	}
	if status == nil {
		// Too old to know: cannot happen minutes after the commit.
		return "", errors.New("txid_status is NULL")
	}
	return *status, nil
}
