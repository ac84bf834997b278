package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// OpenTx is a transaction left open on the test server, as another
// application's forgotten session would leave one: it has a transaction id,
// so it holds back what waits for every older transaction to end.
type OpenTx struct {
	PID   int       // its server process
	XID   uint64    // its transaction id
	Start time.Time // when it began (UTC)
	conn  *pgx.Conn
}

// BeginOpenTx begins such a transaction on a connection of its own, named
// app (application_name). Commit ends it; otherwise it ends with the test.
func BeginOpenTx(t testing.TB, app string) *OpenTx {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(BaseURL())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.RuntimeParams["application_name"] = app
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	tx := &OpenTx{conn: conn}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatalf("pgtest: begin: %v", err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid(), pg_current_xact_id()::text::bigint, now()`).
		Scan(&tx.PID, &tx.XID, &tx.Start); err != nil {
		t.Fatalf("pgtest: open transaction: %v", err)
	}
	tx.Start = tx.Start.UTC()
	return tx
}

// Commit ends the transaction.
func (tx *OpenTx) Commit(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tx.conn.Exec(ctx, "COMMIT"); err != nil {
		t.Fatalf("pgtest: commit: %v", err)
	}
}
