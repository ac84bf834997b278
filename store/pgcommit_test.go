package store

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestPGCommitTx: a group-commit transaction begins with its first batch,
// holds the planner settings (and JIT off) for that transaction only, learns its id, and
// is all or nothing: a failing statement leaves nothing of the batch, and
// the connection goes back to the pool outside any transaction.
func TestPGCommitTx(t *testing.T) {
	t.Parallel()
	e := openEnv(t, "postgres")
	ctx := ctxT(t)
	pg := e.s.(*pgStore)
	if _, err := pg.pool.Exec(ctx, `CREATE TABLE commit_probe (n int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	const settings = `SELECT current_setting('enable_seqscan') || current_setting('enable_hashjoin') || current_setting('enable_mergejoin') || current_setting('jit')`
	var inTx string
	var xid int64
	err := pg.pgCommitTx(ctx, "probe", func(tx pgTx, st *pgTxStart) error {
		st.Queue(`INSERT INTO commit_probe VALUES (1)`)
		st.Queue(settings)
		br, err := st.send(ctx, tx)
		if err != nil {
			return err
		}
		xid = st.xid
		_, err = br.Exec()
		if err == nil {
			err = br.QueryRow().Scan(&inTx)
		}
		return errors.Join(err, br.Close())
	})
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	if inTx != "offoffoffoff" || xid <= 0 {
		t.Errorf("in the transaction: planner settings %q, xid %d; want offoffoffoff and an id", inTx, xid)
	}
	var status string
	if err := pg.pool.QueryRow(ctx, `SELECT txid_status($1)`, xid).Scan(&status); err != nil || status != "committed" {
		t.Errorf("txid_status(%d) = %q, %v; want committed", xid, status, err)
	}

	// A duplicate key fails the batch: the row before it is not stored.
	err = pg.pgCommitTx(ctx, "probe", func(tx pgTx, st *pgTxStart) error {
		st.Queue(`INSERT INTO commit_probe VALUES (2)`)
		st.Queue(`INSERT INTO commit_probe VALUES (1)`)
		br, err := st.send(ctx, tx)
		if err != nil {
			return err
		}
		_, err1 := br.Exec()
		_, err2 := br.Exec()
		return errors.Join(err1, err2, br.Close())
	})
	if err == nil {
		t.Fatal("a batch with a duplicate key committed")
	}
	var n int
	if err := pg.pool.QueryRow(ctx, `SELECT count(*) FROM commit_probe`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d rows after the failed batch (%v), want 1", n, err)
	}

	// Every idle connection is outside a transaction, with the server's
	// planner settings.
	conns := pg.pool.AcquireAllIdle(ctx)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for _, c := range conns {
		checkIdle(t, ctx, c, settings)
	}
}

func checkIdle(t *testing.T, ctx context.Context, c *pgxpool.Conn, settings string) {
	t.Helper()
	if st := c.Conn().PgConn().TxStatus(); st != 'I' {
		t.Errorf("idle connection in transaction status %q", st)
	}
	var s, want string
	if err := c.QueryRow(ctx, `SELECT string_agg(reset_val, '' ORDER BY array_position($1::text[], name))
		FROM pg_settings WHERE name = ANY($1)`, []string{"enable_seqscan", "enable_hashjoin", "enable_mergejoin", "jit"}).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, settings).Scan(&s); err != nil || s != want {
		t.Errorf("idle connection's planner settings %q, %v; want the server's, %q", s, err, want)
	}
}
