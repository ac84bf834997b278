package store

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
)

// Prepared statements of SQLite's hot path.
//
// database/sql prepares a statement anew for every Exec or Query that is
// not given a *sql.Stmt, and SQLite's parser was a tenth of the gateway's
// CPU under load: each message's inserts, its claim, its body read and its
// outcome were parsed again every time. The statements below are prepared
// once per connection and reused: [sqliteStore.txStmt] hands a transaction
// the writer's prepared copy (tx.StmtContext reuses it, it does not prepare
// again), and the body read uses a statement on the read pool.
//
// Preparing needs a connection, and the writer has only one: a statement
// is never prepared while the caller holds a transaction, or it would wait
// for itself. prepareHot runs before the transaction instead.

// sqliteHotSQL lists the statements prepared once; their text is their key.
var sqliteHotSQL = []string{
	sqliteInsertMessage, sqliteInsertRecipient, sqliteInsertEvent,
	sqliteFinishRecipient, sqliteDropBodies, sqliteClaim, sqliteClaimMessages,
}

// sqliteStmts holds the prepared statements of one store.
type sqliteStmts struct {
	w atomic.Pointer[map[string]*sql.Stmt] // on the writer, for its transactions; read-only once set

	mu     sync.Mutex
	body   *sql.Stmt // sqliteMessageBody on the read pool
	closed bool
}

// prepareHot prepares the writer's hot statements if they are not yet. It
// must not be called inside a write transaction, and it holds no lock while
// it waits for the writer's connection (the other committer may be using
// it, and asks txStmt meanwhile). A failure (say, tables not migrated yet)
// leaves the cache empty; txStmt then prepares inside the transaction, as
// database/sql would.
func (s *sqliteStore) prepareHot(ctx context.Context) {
	if s.stmts.w.Load() != nil {
		return
	}
	m := make(map[string]*sql.Stmt, len(sqliteHotSQL))
	closeAll := func() {
		for _, st := range m {
			_ = st.Close()
		}
	}
	for _, q := range sqliteHotSQL {
		st, err := s.w.PrepareContext(ctx, q)
		if err != nil {
			closeAll()
			return
		}
		m[q] = st
	}
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	if s.stmts.closed || !s.stmts.w.CompareAndSwap(nil, &m) {
		closeAll()
	}
}

// txStmt returns q for use in tx: the writer's prepared statement when
// prepareHot made one, else one prepared in tx (closed with it).
func (s *sqliteStore) txStmt(ctx context.Context, tx *sql.Tx, q string) (*sql.Stmt, error) {
	if m := s.stmts.w.Load(); m != nil {
		if st := (*m)[q]; st != nil {
			return tx.StmtContext(ctx, st), nil
		}
	}
	return tx.PrepareContext(ctx, q)
}

// bodyStmt returns the prepared body read on the read pool.
func (s *sqliteStore) bodyStmt(ctx context.Context) (*sql.Stmt, error) {
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	if s.stmts.closed {
		return nil, errClosed
	}
	if s.stmts.body == nil {
		st, err := s.r.PrepareContext(ctx, sqliteMessageBody)
		if err != nil {
			return nil, err
		}
		s.stmts.body = st
	}
	return s.stmts.body, nil
}

// closeStmts closes the prepared statements (before the pools close).
func (s *sqliteStore) closeStmts() {
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	s.stmts.closed = true
	if m := s.stmts.w.Swap(nil); m != nil {
		for _, st := range *m {
			_ = st.Close()
		}
	}
	if s.stmts.body != nil {
		_ = s.stmts.body.Close()
		s.stmts.body = nil
	}
}
