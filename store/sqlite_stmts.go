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
// again), and the hot reads (a message's body, the suppression lookup of
// each RCPT) use statements on the read pool ([sqliteStore.readStmt]).
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
	read   map[string]*sql.Stmt // on the read pool, by text (readStmt)
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

// readStmt returns q prepared on the read pool (database/sql prepares it
// on each connection once, as that connection first runs it). q must be a
// constant: one statement per text is kept for the store's life.
func (s *sqliteStore) readStmt(ctx context.Context, q string) (*sql.Stmt, error) {
	s.stmts.mu.Lock()
	defer s.stmts.mu.Unlock()
	if s.stmts.closed {
		return nil, errClosed
	}
	if st := s.stmts.read[q]; st != nil {
		return st, nil
	}
	st, err := s.r.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	if s.stmts.read == nil {
		s.stmts.read = map[string]*sql.Stmt{}
	}
	s.stmts.read[q] = st
	return st, nil
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
	for q, st := range s.stmts.read {
		_ = st.Close()
		delete(s.stmts.read, q)
	}
}
