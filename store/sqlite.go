package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/smtpgw/smtpgw/store/internal/walbuf"
)

// SQLite backend.
//
// One *sql.DB with a single connection does every write, each in a
// BEGIN IMMEDIATE transaction, so writers queue in Go instead of spinning on
// SQLITE_BUSY; a second pool of query_only connections serves reads, which
// in WAL mode never wait for the writer. synchronous=FULL makes every commit
// durable before it returns. The writer keeps its temporary files in
// memory (temp_store=MEMORY): a batch's multi-row statements each open a
// statement journal, which otherwise spilled to a temporary file created,
// written page by page and deleted in every transaction (about three
// pwrite calls per message). It holds copies of the pages a statement
// changes, so it is bounded by the batch (maxBatchBytes). Times are
// integer Unix microseconds (UTC).

const (
	// sqliteBusyTimeout is how long a connection waits for a lock another
	// process holds (e.g. the CLI while the server runs).
	sqliteBusyTimeout = 10 * time.Second
	// sqliteReaders is the size of the read pool.
	sqliteReaders = 4
)

// sqliteStore implements Store on a SQLite file.
type sqliteStore struct {
	path   string                  // database file
	stmts  sqliteStmts             // prepared statements of the hot path
	w      *sql.DB                 // the one write connection (BEGIN IMMEDIATE)
	r      *sql.DB                 // query_only read pool
	wc     *committer[sqliteWrite] // group commit for Enqueue and Finish together
	wake   chan struct{}           // Wakeups, buffered 1
	health health                  // whether writes commit (Ping)
	usable int                     // usable bytes of a page (sqlite_leaf.go); 0 if unknown
	pad    []byte                  // the writer's padded copy of a body (writeBatch only)

	closeOnce sync.Once
	closeErr  error // result of the first Close
}

// openSQLite opens (creating if needed, mode 0600) the database at path.
func openSQLite(ctx context.Context, path string) (*sqliteStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w (check the data directory is writable)", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	common := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)", sqliteBusyTimeout.Milliseconds())
	// Log frames reach the -wal file in a few large writes
	// (store/internal/walbuf).
	if err := walbuf.Register(); err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	common += "&vfs=" + walbuf.Name
	w, err := sql.Open("sqlite", path+"?"+common+
		"&_pragma=auto_vacuum(INCREMENTAL)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=temp_store(MEMORY)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite %q: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// Connect the writer first: it switches the file to WAL, which the
	// readers rely on.
	if err := w.PingContext(ctx); err != nil {
		return nil, errors.Join(sqliteErr("open sqlite "+path, err), w.Close())
	}
	r, err := sql.Open("sqlite", path+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open sqlite %q: %w", path, err), w.Close())
	}
	r.SetMaxOpenConns(sqliteReaders)
	r.SetMaxIdleConns(sqliteReaders)
	s := &sqliteStore{path: path, w: w, r: r, wake: make(chan struct{}, 1)}
	// Without the page size, bodies are stored unpadded (sqlite_leaf.go).
	if err := w.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&s.usable); err != nil {
		s.usable = 0
	}
	spec := pairSpec(messageSpec(nil, s.wake, &s.health), finishSpec(nil, s.wake, &s.health), s.writeBatch)
	spec.linger, spec.lingers = outcomeLinger, func(it sqliteWrite) bool { return it.isB }
	spec.gather = gatherWait
	s.wc = newCommitter(spec)
	return s, nil
}

// sqliteErr wraps err for operation op, mapping SQLite result codes to the
// sentinel errors.
func sqliteErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		code := se.Code()
		switch code & 0xff {
		case sqlite3.SQLITE_CONSTRAINT:
			if code == sqlite3.SQLITE_CONSTRAINT_UNIQUE || code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY ||
				strings.Contains(se.Error(), "UNIQUE constraint") {
				return fmt.Errorf("%s: %w: %w", op, ErrExists, err)
			}
		case sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY,
			sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB,
			sqlite3.SQLITE_PROTOCOL:
			return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
		}
	}
	if errors.Is(err, sql.ErrConnDone) || strings.Contains(err.Error(), "sql: database is closed") {
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// us is t in Unix microseconds.
func us(t time.Time) int64 { return t.UnixMicro() }

// nullUS is t in Unix microseconds, NULL for the zero time.
func nullUS(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// fromUS converts stored Unix microseconds to a UTC time.
func fromUS(v int64) time.Time { return time.UnixMicro(v).UTC() }

// fromNullUS converts a nullable stored time; NULL is the zero time.
func fromNullUS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromUS(v.Int64)
}

// inTx runs fn in a write transaction and commits it.
func (s *sqliteStore) inTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	return runSQLiteTx(op, func() (*sql.Tx, error) { return s.w.BeginTx(ctx, nil) }, fn)
}

// runSQLiteTx begins a transaction, runs fn in it and commits it, or rolls
// it back if fn fails.
func runSQLiteTx(op string, begin func() (*sql.Tx, error), fn func(tx *sql.Tx) error) error {
	tx, err := begin()
	if err != nil {
		return sqliteErr(op, err)
	}
	if err := fn(tx); err != nil {
		if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			err = errors.Join(err, rerr)
		}
		return sqliteErr(op, err)
	}
	return sqliteErr(op, tx.Commit())
}

// inLeaseTx is inTx for a transaction that only takes leases (a claim):
// it commits without syncing the WAL (synchronous=NORMAL), which is still
// atomic and survives the process being killed; a power cut may forget the
// leases, and the recipients are claimed again, as when a lease runs out.
// The next synced commit syncs the WAL up to and including it. Without
// this, a lightly loaded gateway synced the WAL three times per message:
// for the message, its claim and its outcome.
func (s *sqliteStore) inLeaseTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) (err error) {
	c, err := s.w.Conn(ctx)
	if err != nil {
		return sqliteErr(op, err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, `PRAGMA synchronous = NORMAL`); err != nil {
		return sqliteErr(op, err)
	}
	defer func() {
		// Back to FULL before the connection serves anyone else; if that
		// fails, the connection is dropped (a new one opens with FULL).
		if _, rerr := c.ExecContext(context.Background(), `PRAGMA synchronous = FULL`); rerr != nil {
			_ = c.Raw(func(any) error { return driver.ErrBadConn })
			err = errors.Join(err, sqliteErr(op, rerr))
		}
	}()
	return runSQLiteTx(op, func() (*sql.Tx, error) { return c.BeginTx(ctx, nil) }, fn)
}

// Migrate implements Store.
func (s *sqliteStore) Migrate(ctx context.Context) error {
	ms, err := loadMigrations("sqlite")
	if err != nil {
		return err
	}
	for _, m := range ms {
		err := s.inTx(ctx, "migrate "+m.Name, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
				version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, m.Version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, m.Version, us(time.Now()))
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Ping implements Store.
func (s *sqliteStore) Ping(ctx context.Context) error {
	var one int
	if err := s.r.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return sqliteErr("ping sqlite", err)
	}
	return s.health.check(ctx, func(ctx context.Context) error {
		_, err := s.w.ExecContext(ctx, `INSERT INTO write_probe (id, at) VALUES (1, ?)
			ON CONFLICT (id) DO UPDATE SET at = excluded.at`, us(time.Now()))
		return sqliteErr("ping sqlite: write", err)
	})
}

// Close implements Store.
func (s *sqliteStore) Close() error {
	s.closeOnce.Do(func() {
		s.wc.close()
		s.closeStmts()
		s.closeErr = errors.Join(s.r.Close(), s.w.Close())
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("close sqlite: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// Wakeups implements Store.
func (s *sqliteStore) Wakeups() <-chan struct{} { return s.wake }

// API keys.

const sqliteKeyCols = `id, label, grants, short_key, hash, subaccount, allowed_ips,
	created_at, updated_at, last_used_at, revoked_at, expires_at, last_used_ip`

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

func scanSQLiteKey(sc scanner) (*Key, error) {
	var (
		k                 Key
		grants, ips       string
		created, updated  int64
		lastUsed, revoked sql.NullInt64
		expires           sql.NullInt64
		lastIP            string
	)
	if err := sc.Scan(&k.ID, &k.Label, &grants, &k.ShortKey, &k.Hash, &k.Subaccount, &ips,
		&created, &updated, &lastUsed, &revoked, &expires, &lastIP); err != nil {
		return nil, err
	}
	k.CreatedAt, k.UpdatedAt = fromUS(created), fromUS(updated)
	k.LastUsedAt, k.RevokedAt = fromNullUS(lastUsed), fromNullUS(revoked)
	k.ExpiresAt = fromNullUS(expires)
	k.LastUsedIP = parseStoredAddr(lastIP)
	g, err := parseJSONStrings(grants)
	if err != nil {
		return nil, err
	}
	ipl, err := parseJSONStrings(ips)
	if err != nil {
		return nil, err
	}
	return &k, keyFromParts(&k, g, ipl)
}

// CreateKey implements Store.
func (s *sqliteStore) CreateKey(ctx context.Context, k *Key) error {
	if len(k.Hash) == 0 {
		return errors.New("create key: no hash")
	}
	if k.ID == "" {
		k.ID = NewKeyID()
	}
	grants, err := jsonStrings(k.Grants)
	if err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	ips, err := jsonStrings(prefixStrings(k.AllowedIPs))
	if err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	now := utc(time.Now())
	err = s.inTx(ctx, "create key", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO api_keys (`+sqliteKeyCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			k.ID, k.Label, grants, k.ShortKey, k.Hash, k.Subaccount, ips,
			us(now), us(now), nullUS(k.LastUsedAt), nullUS(k.RevokedAt), nullUS(k.ExpiresAt), addrString(k.LastUsedIP))
		return err
	})
	if err != nil {
		return err
	}
	k.CreatedAt, k.UpdatedAt = now, now
	return nil
}

// GetKey implements Store.
func (s *sqliteStore) GetKey(ctx context.Context, id string) (*Key, error) {
	k, err := scanSQLiteKey(s.r.QueryRowContext(ctx, `SELECT `+sqliteKeyCols+` FROM api_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get key %s: %w", id, ErrNotFound)
	}
	return k, sqliteErr("get key", err)
}

// KeyByHash implements Store.
func (s *sqliteStore) KeyByHash(ctx context.Context, hash []byte) (*Key, error) {
	k, err := scanSQLiteKey(s.r.QueryRowContext(ctx, `SELECT `+sqliteKeyCols+` FROM api_keys WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("key by hash: %w", ErrNotFound)
	}
	return k, sqliteErr("key by hash", err)
}

// UpdateKey implements Store.
func (s *sqliteStore) UpdateKey(ctx context.Context, k *Key) error {
	grants, err := jsonStrings(k.Grants)
	if err != nil {
		return fmt.Errorf("update key: %w", err)
	}
	ips, err := jsonStrings(prefixStrings(k.AllowedIPs))
	if err != nil {
		return fmt.Errorf("update key: %w", err)
	}
	now := utc(time.Now())
	err = s.inTx(ctx, "update key", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_keys SET label = ?, grants = ?, subaccount = ?,
			allowed_ips = ?, expires_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL`,
			k.Label, grants, k.Subaccount, ips, nullUS(k.ExpiresAt), us(now), k.ID)
		return oneRow(res, err, k.ID)
	})
	if err != nil {
		return err
	}
	k.UpdatedAt = now
	return nil
}

// oneRow turns an Exec result that changed no row into ErrNotFound.
func oneRow(res sql.Result, err error, id string) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return nil
}

// RevokeKey implements Store.
func (s *sqliteStore) RevokeKey(ctx context.Context, id string) error {
	now := us(time.Now())
	return s.inTx(ctx, "revoke key", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_keys SET revoked_at = ?, updated_at = ?
			WHERE id = ? AND revoked_at IS NULL`, now, now, id)
		return oneRow(res, err, id)
	})
}

// TouchKey implements Store. The last-used time never goes back; the
// address changes only with a later use.
func (s *sqliteStore) TouchKey(ctx context.Context, id string, at time.Time, ip netip.Addr) error {
	return s.inTx(ctx, "touch key", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_keys SET
			last_used_ip = CASE WHEN coalesce(last_used_at, 0) <= ?1 THEN ?2 ELSE last_used_ip END,
			last_used_at = max(coalesce(last_used_at, 0), ?1)
			WHERE id = ?3`, us(at), addrString(ip), id)
		return oneRow(res, err, id)
	})
}

// Queue.

// Enqueue implements Store.
func (s *sqliteStore) Enqueue(ctx context.Context, m *Message) error {
	if err := prepareMessage(m, time.Now()); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	return s.wc.add(ctx, sqliteWrite{a: m})
}

// Arriving implements Store.
func (s *sqliteStore) Arriving() (done func()) { return s.wc.arrive() }

// CommitStats implements Store.
func (s *sqliteStore) CommitStats() CommitStats { return s.wc.stats() }

// outcomeLinger is how long a batch of delivery outcomes alone waits for a
// message to share its transaction. Under load every batch holds both; at
// a few hundred messages per second a message's outcome would otherwise
// cost a synced commit of its own, as much as the message itself. Nobody
// waits for an outcome but the relay worker that wrote it.
const outcomeLinger = 10 * time.Millisecond

// sqliteWrite is an item of the group committer: a message to enqueue or
// the outcomes of a Finish call.
type sqliteWrite = either[*Message, *finishOp]

// writeBatch is the group committer's batch writer: new messages and
// delivery outcomes that arrived together share one transaction, so
// under load the one writer commits (and syncs) once for both. Before it
// commits it writes in the same transaction what more gives it: the items
// that arrived while it wrote (commitSpec.gather), so that the writer,
// which every session waits on, waits only when it has nothing to write.
//
// ctx (the batch deadline) bounds the wait for the writer connection,
// BEGIN and COMMIT; the statements between run without it: modernc's
// driver watches a cancellable context with a goroutine per statement,
// several per message, while nothing a deadline could stop happens there
// (a lock another process holds already ends at busy_timeout, and a
// stalled disk is not interruptible).
func (s *sqliteStore) writeBatch(ctx context.Context, msgs []*Message, ops []*finishOp, more func() ([]*Message, []*finishOp)) error {
	s.prepareHot(ctx)
	return s.inTx(ctx, "write batch", func(tx *sql.Tx) error {
		ctx := context.WithoutCancel(ctx)
		for {
			if err := s.writeFinishes(ctx, tx, ops); err != nil {
				return err
			}
			if err := s.insertMessages(ctx, tx, msgs); err != nil {
				return err
			}
			if more == nil {
				return nil
			}
			if msgs, ops = more(); len(msgs)+len(ops) == 0 {
				return nil
			}
		}
	})
}

// The hot statements that write recipients (or several messages) say OR
// FAIL: with the default (ABORT) SQLite copies every page such a statement
// changes to a statement journal, so that it can undo that statement alone
// and keep the transaction; here any failure fails the whole batch, which
// is rolled back (migration 0015 has the rest).
const (
	sqliteInsertMessage = `INSERT INTO messages (id, key_id, subaccount, mail_from, body,
		size, smtputf8, body_type, dsn_ret, dsn_envid, campaign_id, msys_api, created_at, info)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqliteInsertRecipient = `INSERT OR FAIL INTO recipients (message_id, address, domain, state,
		attempts, next_attempt, last_reply, dsn_notify, dsn_orcpt, updated_at, lease_owner, lease_until)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqliteInsertEvent = `INSERT INTO events (type, time, message_id, key_id, subaccount,
		recipient, campaign_id, metadata, tags, reply, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
)

// sqliteMessageRow returns the values of m's row for sqliteInsertMessage,
// in its order; the body is at sqliteBodyArg.
func sqliteMessageRow(m *Message) ([]any, error) {
	body := m.Body
	if body == nil {
		body = []byte{}
	}
	var msys any
	if len(m.MsysAPI) > 0 {
		msys = string(m.MsysAPI)
	}
	info, err := messageInfo(m)
	if err != nil {
		return nil, err
	}
	return []any{m.ID, m.KeyID, m.Subaccount, m.MailFrom, body, len(body), m.SMTPUTF8,
		m.BodyType, m.DSNRet, m.DSNEnvID, m.CampaignID, msys, us(m.CreatedAt), info}, nil
}

// sqliteBodyArg is the body's place in sqliteMessageRow.
const sqliteBodyArg = 4

// insertMessages writes messages, recipients (setting their ids) and
// injection events inside tx.
func (s *sqliteStore) insertMessages(ctx context.Context, tx *sql.Tx, msgs []*Message) error {
	if len(msgs) == 0 {
		return nil
	}
	ms, err := s.txStmt(ctx, tx, sqliteInsertMessage)
	if err != nil {
		return err
	}
	defer ms.Close()
	rs, err := s.txStmt(ctx, tx, sqliteInsertRecipient)
	if err != nil {
		return err
	}
	defer rs.Close()
	var evs []Event
	for _, m := range msgs {
		args, err := sqliteMessageRow(m)
		if err != nil {
			return err
		}
		args[sqliteBodyArg] = s.padBody(args[sqliteBodyArg].([]byte), args)
		if _, err := ms.ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("insert message %s: %w", m.ID, err)
		}
		var leaseOwner, leaseUntil any
		if m.Lease != nil {
			leaseOwner, leaseUntil = m.Lease.Owner, us(m.Lease.Until)
		}
		for _, r := range m.Recipients {
			res, err := rs.ExecContext(ctx, m.ID, r.Address, r.Domain, r.State, r.Attempts,
				us(r.NextAttempt), r.LastReply, r.DSNNotify, r.DSNOrcpt, us(r.UpdatedAt), leaseOwner, leaseUntil)
			if err != nil {
				return fmt.Errorf("insert recipient of %s: %w", m.ID, err)
			}
			if r.ID, err = res.LastInsertId(); err != nil {
				return fmt.Errorf("insert recipient of %s: %w", m.ID, err)
			}
		}
		evs = append(evs, injectionEvents(m)...)
	}
	return s.insertEvents(ctx, tx, evs)
}

// insertEvents writes events inside tx, setting their ids.
func (s *sqliteStore) insertEvents(ctx context.Context, tx *sql.Tx, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	st, err := s.txStmt(ctx, tx, sqliteInsertEvent)
	if err != nil {
		return err
	}
	defer st.Close()
	return execSQLiteEvents(ctx, st, evs)
}

// insertSQLiteEvents is insertEvents for a transaction off the hot path.
func insertSQLiteEvents(ctx context.Context, tx *sql.Tx, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	st, err := tx.PrepareContext(ctx, sqliteInsertEvent)
	if err != nil {
		return err
	}
	defer st.Close()
	return execSQLiteEvents(ctx, st, evs)
}

// execSQLiteEvents inserts evs with st (sqliteInsertEvent), setting their
// ids.
func execSQLiteEvents(ctx context.Context, st *sql.Stmt, evs []Event) error {
	for i := range evs {
		e := &evs[i]
		var meta, tags any
		if len(e.Metadata) > 0 {
			meta = string(e.Metadata)
		}
		if e.Tags != nil {
			t, err := jsonStrings(e.Tags)
			if err != nil {
				return err
			}
			tags = t
		}
		detail, err := e.encodedDetail()
		if err != nil {
			return err
		}
		res, err := st.ExecContext(ctx, e.Type, us(e.Time), e.MessageID, e.KeyID, e.Subaccount,
			e.Recipient, e.CampaignID, meta, tags, e.Reply, detail)
		if err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		if e.ID, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
	}
	return nil
}

const sqliteRcptCols = `id, message_id, address, domain, state, attempts, next_attempt,
	last_reply, dsn_notify, dsn_orcpt, updated_at`

func scanSQLiteRcpt(sc scanner) (*Recipient, error) {
	var (
		r             Recipient
		next, updated int64
	)
	if err := sc.Scan(&r.ID, &r.MessageID, &r.Address, &r.Domain, &r.State, &r.Attempts, &next,
		&r.LastReply, &r.DSNNotify, &r.DSNOrcpt, &updated); err != nil {
		return nil, err
	}
	r.NextAttempt, r.UpdatedAt = fromUS(next), fromUS(updated)
	return &r, nil
}

// placeholders returns "?, ?, ..." with n marks.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// ClaimDue implements Store.
func (s *sqliteStore) ClaimDue(ctx context.Context, owner string, o ClaimOptions) ([]*Claimed, error) {
	if owner == "" || o.Limit <= 0 || o.Lease <= 0 {
		return nil, fmt.Errorf("claim due: need an owner, a positive limit and a positive lease")
	}
	now := time.Now()
	exclude := "[]"
	if len(o.ExcludeDomains) > 0 {
		b, err := json.Marshal(o.ExcludeDomains)
		if err != nil {
			return nil, fmt.Errorf("claim due: %w", err)
		}
		exclude = string(b)
	}
	q, args := sqliteClaim, []any{owner, us(now.Add(o.Lease)), us(now), exclude, o.Limit}
	if o.MessageID != "" {
		// The rest of one message (rare): a statement of its own, so
		// that the common one keeps its plan.
		q = sqliteClaimFor(o.Domain != "")
		args = append(args, o.MessageID)
		if o.Domain != "" {
			args = append(args, o.Domain)
		}
	} else {
		s.prepareHot(ctx)
	}
	var out []*Claimed
	err := s.inLeaseTx(ctx, "claim due", func(tx *sql.Tx) error {
		out = out[:0]
		st, err := s.txStmt(ctx, tx, q)
		if err != nil {
			return err
		}
		defer st.Close()
		rows, err := st.QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		byMsg := map[string][]*Claimed{}
		for rows.Next() {
			r, err := scanSQLiteRcpt(rows)
			if err != nil {
				return errors.Join(err, rows.Close())
			}
			c := &Claimed{Recipient: *r}
			out = append(out, c)
			byMsg[r.MessageID] = append(byMsg[r.MessageID], c)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if len(byMsg) == 0 {
			return nil
		}
		ids := make([]string, 0, len(byMsg))
		for id := range byMsg {
			ids = append(ids, id)
		}
		idsJSON, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		ms, err := s.txStmt(ctx, tx, sqliteClaimMessages)
		if err != nil {
			return err
		}
		defer ms.Close()
		mrows, err := ms.QueryContext(ctx, string(idsJSON), claimBodyMax)
		if err != nil {
			return err
		}
		defer mrows.Close()
		for mrows.Next() {
			var (
				c       Claimed
				id      string
				created int64
				msys    sql.NullString
				info    sql.NullString
			)
			if err := mrows.Scan(&id, &c.MailFrom, &c.KeyID, &c.Subaccount, &c.CampaignID,
				&c.BodyType, &c.SMTPUTF8, &c.DSNRet, &c.DSNEnvID, &created, &msys, &info, &c.Size, &c.Body); err != nil {
				return err
			}
			if info.Valid {
				if err := decodeInfo([]byte(info.String), &c.Info); err != nil {
					return err
				}
			}
			c.CreatedAt = fromUS(created)
			if msys.Valid {
				c.MsysAPI = json.RawMessage(msys.String)
			}
			for _, cl := range byMsg[id] {
				rcpt := cl.Recipient
				*cl = c
				cl.Recipient = rcpt
			}
		}
		return mrows.Err()
	})
	if err != nil {
		return nil, err
	}
	sortClaimed(out)
	return out, nil
}

// claimBodyMax is the largest body a claim returns with its recipients;
// the relay reads a larger one with MessageBody when it delivers it, so
// that one claim never holds more than a few MiB.
const claimBodyMax = 256 << 10

// The claim: lease the due recipients (?1 owner, ?2 lease end, ?3 now, ?4
// domains to skip as a JSON array, ?5 limit), oldest first, then read their
// messages (?1 ids as a JSON array), with the body when it is at most ?2
// bytes. The domain filter applies to the rows the recipients_due index
// scan yields.
const (
	sqliteClaimHead = `UPDATE recipients SET lease_owner = ?1, lease_until = ?2
	WHERE id IN (SELECT id FROM recipients
		WHERE state IN ('queued', 'deferred') AND next_attempt <= ?3
		AND (lease_until IS NULL OR lease_until <= ?3)
		AND domain NOT IN (SELECT value FROM json_each(?4))`
	sqliteClaimTail = `
		ORDER BY next_attempt, id LIMIT ?5)
	RETURNING ` + sqliteRcptCols
	sqliteClaim         = sqliteClaimHead + sqliteClaimTail
	sqliteClaimMessages = `SELECT id, mail_from, key_id, subaccount, campaign_id,
	body_type, smtputf8, dsn_ret, dsn_envid, created_at, msys_api, info, size,
	CASE WHEN size <= ?2 THEN substr(body, 1, size) END
	FROM messages WHERE id IN (SELECT value FROM json_each(?1))`
)

// sqliteClaimFor is the claim of one message's recipients (?6), and of
// one domain (?7) if byDomain.
func sqliteClaimFor(byDomain bool) string {
	q := sqliteClaimHead + ` AND message_id = ?6`
	if byDomain {
		q += ` AND domain = ?7`
	}
	return q + sqliteClaimTail
}

const sqliteMessageBody = `SELECT substr(body, 1, size) FROM messages WHERE id = ?`

// MessageBody implements Store.
func (s *sqliteStore) MessageBody(ctx context.Context, id string) ([]byte, error) {
	st, err := s.readStmt(ctx, sqliteMessageBody)
	if err != nil {
		return nil, sqliteErr("message body", err)
	}
	var b []byte
	err = st.QueryRowContext(ctx, id).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("message body %s: %w", id, ErrNotFound)
	}
	return b, sqliteErr("message body", err)
}

// Finish implements Store. Concurrent calls, and messages enqueued
// meanwhile, share a transaction (see writeBatch).
func (s *sqliteStore) Finish(ctx context.Context, owner string, f Finish) (int, error) {
	op, err := newFinishOp(owner, f, time.Now())
	if err != nil {
		return 0, err
	}
	if err := s.wc.add(ctx, sqliteWrite{b: op, isB: true}); err != nil {
		return 0, err
	}
	return op.applied, nil
}

const sqliteFinishRecipient = `UPDATE OR FAIL recipients SET state = ?,
	next_attempt = CASE WHEN ? THEN ? ELSE next_attempt END,
	last_reply = ?, attempts = attempts + 1, lease_owner = NULL, lease_until = NULL, updated_at = ?
	WHERE id = ? AND lease_owner = ?`

// writeFinishes writes the outcomes, events and new messages of every op
// inside tx.
func (s *sqliteStore) writeFinishes(ctx context.Context, tx *sql.Tx, ops []*finishOp) error {
	if len(ops) == 0 {
		return nil
	}
	st, err := s.txStmt(ctx, tx, sqliteFinishRecipient)
	if err != nil {
		return err
	}
	defer st.Close()
	var (
		evs  []Event
		msgs []*Message
	)
	for _, op := range ops {
		stale := map[staleRecipient]bool{}
		for _, o := range op.f.Outcomes {
			next, setNext := op.outcomeNext(o)
			res, err := st.ExecContext(ctx, o.State, setNext, us(next), o.Reply, us(op.now), o.RecipientID, op.owner)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			if n == 1 {
				op.applied++
				continue
			}
			var sr staleRecipient
			err = tx.QueryRowContext(ctx, `SELECT message_id, address FROM recipients WHERE id = ?`,
				o.RecipientID).Scan(&sr.messageID, &sr.address)
			if err == nil {
				stale[sr] = true
			} else if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		evs = append(evs, dropStaleEvents(op.evs, stale)...)
		if op.writesMessages() && len(op.f.Enqueue) > 0 {
			msgs = append(msgs, op.f.Enqueue...)
			op.wrote = true
		}
	}
	if err := s.dropBodies(ctx, tx, finalRecipientIDs(ops)); err != nil {
		return err
	}
	if err := s.insertEvents(ctx, tx, evs); err != nil {
		return err
	}
	return s.insertMessages(ctx, tx, msgs)
}

// Queue administration.

const sqliteMsgCols = `id, key_id, subaccount, mail_from, size, smtputf8, body_type, dsn_ret, dsn_envid,
	campaign_id, msys_api, created_at`

func scanSQLiteMsg(sc scanner, extra ...any) (*Message, error) {
	var (
		m       Message
		msys    sql.NullString
		created int64
	)
	dest := append([]any{&m.ID, &m.KeyID, &m.Subaccount, &m.MailFrom, &m.Size, &m.SMTPUTF8, &m.BodyType,
		&m.DSNRet, &m.DSNEnvID, &m.CampaignID, &msys, &created}, extra...)
	if err := sc.Scan(dest...); err != nil {
		return nil, err
	}
	if msys.Valid {
		m.MsysAPI = []byte(msys.String)
	}
	m.CreatedAt = fromUS(created)
	return &m, nil
}

// ListMessages implements Store.
func (s *sqliteStore) ListMessages(ctx context.Context, f QueueFilter) ([]*Message, error) {
	var (
		where []string
		args  []any
	)
	if f.State != "" {
		where = append(where, `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = ?)`)
		args = append(args, f.State)
	}
	if f.Domain != "" {
		where = append(where, `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.domain = ?)`)
		args = append(args, normDomain(f.Domain))
	}
	if f.KeyID != "" {
		where = append(where, `m.key_id = ?`)
		args = append(args, f.KeyID)
	}
	if f.Subaccount != nil {
		where = append(where, `m.subaccount = ?`)
		args = append(args, *f.Subaccount)
	}
	q := `SELECT ` + sqliteMsgCols + ` FROM messages m`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	if f.OldestFirst {
		q += ` ORDER BY m.created_at, m.id LIMIT ?`
	} else {
		q += ` ORDER BY m.created_at DESC, m.id DESC LIMIT ?`
	}
	args = append(args, limitOr(f.Limit, 1000))

	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, sqliteErr("list messages", err)
	}
	defer func() { _ = tx.Rollback() }() // read-only: nothing to keep
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, sqliteErr("list messages", err)
	}
	var msgs []*Message
	byID := map[string]*Message{}
	for rows.Next() {
		m, err := scanSQLiteMsg(rows)
		if err != nil {
			return nil, sqliteErr("list messages", errors.Join(err, rows.Close()))
		}
		msgs = append(msgs, m)
		byID[m.ID] = m
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, sqliteErr("list messages", err)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	ids := make([]any, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	rrows, err := tx.QueryContext(ctx, `SELECT `+sqliteRcptCols+` FROM recipients
		WHERE message_id IN (`+placeholders(len(ids))+`) ORDER BY id`, ids...)
	if err != nil {
		return nil, sqliteErr("list messages", err)
	}
	defer rrows.Close()
	for rrows.Next() {
		r, err := scanSQLiteRcpt(rrows)
		if err != nil {
			return nil, sqliteErr("list messages", err)
		}
		if m := byID[r.MessageID]; m != nil {
			m.Recipients = append(m.Recipients, r)
		}
	}
	return msgs, sqliteErr("list messages", rrows.Err())
}

// GetMessage implements Store.
func (s *sqliteStore) GetMessage(ctx context.Context, id string) (*Message, error) {
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, sqliteErr("get message", err)
	}
	defer func() { _ = tx.Rollback() }() // read-only: nothing to keep
	var body []byte
	m, err := scanSQLiteMsg(tx.QueryRowContext(ctx, `SELECT `+sqliteMsgCols+`, substr(body, 1, size) FROM messages WHERE id = ?`, id), &body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get message %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, sqliteErr("get message", err)
	}
	m.Body = body
	rows, err := tx.QueryContext(ctx, `SELECT `+sqliteRcptCols+` FROM recipients WHERE message_id = ? ORDER BY id`, id)
	if err != nil {
		return nil, sqliteErr("get message", err)
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanSQLiteRcpt(rows)
		if err != nil {
			return nil, sqliteErr("get message", err)
		}
		m.Recipients = append(m.Recipients, r)
	}
	return m, sqliteErr("get message", rows.Err())
}

// RetryMessage implements Store.
func (s *sqliteStore) RetryMessage(ctx context.Context, id string) (int, error) {
	now := us(time.Now())
	n, err := s.updateAndWake(ctx, "retry message", func(tx *sql.Tx) (sql.Result, error) {
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM messages WHERE id = ?`, id).Scan(&exists); err != nil {
			return nil, err
		}
		if exists == 0 {
			return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		return tx.ExecContext(ctx, `UPDATE recipients SET next_attempt = ?, updated_at = ?
			WHERE message_id = ? AND state IN ('queued', 'deferred')`, now, now, id)
	})
	return int(n), err
}

// updateAndWake runs fn's update in a transaction and, when it made
// recipients due (rows changed), wakes the relay once it committed.
func (s *sqliteStore) updateAndWake(ctx context.Context, op string, fn func(tx *sql.Tx) (sql.Result, error)) (int64, error) {
	var n int64
	err := s.inTx(ctx, op, func(tx *sql.Tx) error {
		res, err := fn(tx)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	if n > 0 {
		wake(s.wake)
	}
	return n, nil
}

// DeleteMessage implements Store.
func (s *sqliteStore) DeleteMessage(ctx context.Context, id string) error {
	return s.inTx(ctx, "delete message", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM messages WHERE id = ?`, id)
		return oneRow(res, err, id)
	})
}

// Stats implements Store.
func (s *sqliteStore) Stats(ctx context.Context) (QueueStats, error) {
	st := QueueStats{ByState: map[string]int64{}}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return st, sqliteErr("queue stats", err)
	}
	defer func() { _ = tx.Rollback() }() // read-only: nothing to keep
	rows, err := tx.QueryContext(ctx, `SELECT state, n FROM queue_counts WHERE n <> 0`)
	if err != nil {
		return st, sqliteErr("queue stats", err)
	}
	for rows.Next() {
		var (
			state string
			n     int64
		)
		if err := rows.Scan(&state, &n); err != nil {
			return st, sqliteErr("queue stats", errors.Join(err, rows.Close()))
		}
		st.ByState[state] = n
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return st, sqliteErr("queue stats", err)
	}
	var oldest sql.NullInt64
	if err := tx.QueryRowContext(ctx, sqliteOldestWaiting).Scan(&oldest); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return st, sqliteErr("queue stats", err)
	}
	st.OldestQueued = fromNullUS(oldest)
	return st, nil
}

// Events.

// AddEvents implements Store.
func (s *sqliteStore) AddEvents(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	prepareEvents(evs, time.Now())
	return s.inTx(ctx, "add events", func(tx *sql.Tx) error {
		return s.insertEvents(ctx, tx, evs)
	})
}

// ListEvents implements Store.
func (s *sqliteStore) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	var (
		where []string
		args  []any
	)
	if f.MessageID != "" {
		where = append(where, `message_id = ?`)
		args = append(args, f.MessageID)
	}
	if f.KeyID != "" {
		where = append(where, `key_id = ?`)
		args = append(args, f.KeyID)
	}
	if f.Subaccount != nil {
		where = append(where, `subaccount = ?`)
		args = append(args, *f.Subaccount)
	}
	if len(f.Types) > 0 {
		where = append(where, `type IN (`+placeholders(len(f.Types))+`)`)
		for _, t := range f.Types {
			args = append(args, t)
		}
	}
	if !f.Since.IsZero() {
		where = append(where, `time >= ?`)
		args = append(args, us(f.Since))
	}
	q := `SELECT ` + sqliteEventCols + ` FROM events`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY time DESC, id DESC LIMIT ?`
	args = append(args, limitOr(f.Limit, 1000))
	return s.queryEvents(ctx, "list events", q, args...)
}

// sqliteEventCols are the columns scanSQLiteEvent reads.
const sqliteEventCols = `id, type, time, message_id, key_id, subaccount, recipient, campaign_id, metadata, tags, reply, detail`

// queryEvents runs q, which selects sqliteEventCols, and scans its rows.
func (s *sqliteStore) queryEvents(ctx context.Context, op, q string, args ...any) ([]Event, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, sqliteErr(op, err)
	}
	defer rows.Close()
	var evs []Event
	for rows.Next() {
		e, err := scanSQLiteEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		evs = append(evs, e)
	}
	return evs, sqliteErr(op, rows.Err())
}

// scanSQLiteEvent reads one row of sqliteEventCols.
func scanSQLiteEvent(sc scanner) (Event, error) {
	var (
		e                  Event
		t                  int64
		meta, tags, detail sql.NullString
	)
	if err := sc.Scan(&e.ID, &e.Type, &t, &e.MessageID, &e.KeyID, &e.Subaccount, &e.Recipient,
		&e.CampaignID, &meta, &tags, &e.Reply, &detail); err != nil {
		return e, err
	}
	e.Time = fromUS(t)
	if meta.Valid {
		e.Metadata = []byte(meta.String)
	}
	if tags.Valid {
		if err := json.Unmarshal([]byte(tags.String), &e.Tags); err != nil {
			return e, fmt.Errorf("decode tags of event %d: %w", e.ID, err)
		}
	}
	if detail.Valid {
		if err := decodeDetail([]byte(detail.String), &e.Detail); err != nil {
			return e, fmt.Errorf("event %d: %w", e.ID, err)
		}
	}
	return e, nil
}

// PruneEvents implements Store.
func (s *sqliteStore) PruneEvents(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune events", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE time < ?`, us(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n, err
}

// Sending domains.

const sqliteDomainCols = `name, subaccount, shared, selector, algorithm, private_key, public_key, created_at`

func scanSQLiteDomain(sc scanner) (*Domain, error) {
	var (
		d       Domain
		created int64
	)
	if err := sc.Scan(&d.Name, &d.Subaccount, &d.Shared, &d.Selector, &d.Algorithm, &d.PrivateKey,
		&d.PublicKey, &created); err != nil {
		return nil, err
	}
	d.CreatedAt = fromUS(created)
	return &d, nil
}

// CreateDomain implements Store.
func (s *sqliteStore) CreateDomain(ctx context.Context, d *Domain) error {
	d.Name = normDomain(d.Name)
	if d.Name == "" {
		return errors.New("create domain: no name")
	}
	if d.CreatedAt.IsZero() {
		d.CreatedAt = time.Now()
	}
	d.CreatedAt = utc(d.CreatedAt)
	pk := d.PrivateKey
	if pk == nil {
		pk = []byte{}
	}
	return s.inTx(ctx, "create domain", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO domains (`+sqliteDomainCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			d.Name, d.Subaccount, d.Shared, d.Selector, d.Algorithm, pk, d.PublicKey, us(d.CreatedAt))
		return err
	})
}

// GetDomain implements Store.
func (s *sqliteStore) GetDomain(ctx context.Context, name string) (*Domain, error) {
	d, err := scanSQLiteDomain(s.r.QueryRowContext(ctx, `SELECT `+sqliteDomainCols+` FROM domains WHERE name = ?`, normDomain(name)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get domain %s: %w", name, ErrNotFound)
	}
	return d, sqliteErr("get domain", err)
}

// ListDomains implements Store.
func (s *sqliteStore) ListDomains(ctx context.Context) ([]*Domain, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+sqliteDomainCols+` FROM domains ORDER BY name`)
	if err != nil {
		return nil, sqliteErr("list domains", err)
	}
	defer rows.Close()
	var ds []*Domain
	for rows.Next() {
		d, err := scanSQLiteDomain(rows)
		if err != nil {
			return nil, sqliteErr("list domains", err)
		}
		ds = append(ds, d)
	}
	return ds, sqliteErr("list domains", rows.Err())
}

// DeleteDomain implements Store.
func (s *sqliteStore) DeleteDomain(ctx context.Context, name string) error {
	return s.inTx(ctx, "delete domain", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM domains WHERE name = ?`, normDomain(name))
		return oneRow(res, err, name)
	})
}
