package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/puddle/v2"
)

// PostgreSQL backend.
//
// Several gateway nodes may share one database. Relay workers lease due
// recipients with FOR UPDATE SKIP LOCKED, so two nodes never claim the same
// row and a dead node's rows come back when the lease ends. Each Enqueue
// batch sends NOTIFY smtpgw_queue in its transaction; every node LISTENs on
// a dedicated connection and turns notifications into Wakeups.
//
// Lease and due times are the gateway's clock (time.Now), the same clock the
// relay uses to compute NextAttempt; nodes are expected to run NTP.

const (
	// notifyChannel is the LISTEN/NOTIFY channel for new mail.
	notifyChannel = "smtpgw_queue"
	// pgConnectTimeout applies when the url sets no connect_timeout, so a
	// dead server fails a request instead of hanging it.
	pgConnectTimeout = 5 * time.Second
	// pgDefaultMaxConns is the pool size when the url sets no pool_max_conns.
	pgDefaultMaxConns = 16
	// Reconnect backoff of the listener.
	listenBackoffMin = 100 * time.Millisecond
	listenBackoffMax = 5 * time.Second
	// pgSpacing and pgSpaceFull space the group committer's back-to-back
	// transactions (commitSpec.spacing): the next one begins 5 ms after the
	// last began, or once 16 items wait. A transaction costs PostgreSQL
	// about a millisecond of CPU whatever it holds (its statements, BEGIN,
	// COMMIT); at a moderate pace, committing as soon as the last commit
	// ended made transactions of three items that kept the committer busy
	// all the time and cost PostgreSQL 2-3 times the CPU per message of a
	// full-speed run. Sixteen items already share that cost well, and under
	// full load they are queued as soon as the last commit's sessions sent
	// their next messages: with 64, twenty sessions (about ten messages and
	// ten outcomes behind each commit) waited out every 5 ms on a machine
	// whose transactions took 2.6 ms, and injected 2,100 msg/s instead of
	// 3,500. A message that finds the committer idle, or alone in the
	// queue, commits at once (docs/benchmarks.md, issue 12).
	pgSpacing   = 5 * time.Millisecond
	pgSpaceFull = 16
	// pgFoldCountsEvery is how often, at most, Stats folds queue_counts'
	// deltas before it sums them (see Stats).
	pgFoldCountsEvery = 5 * time.Second
)

// pgNotify announces new mail to every node. The payload is the schema, so
// gateways (or tests) sharing a database but not a schema do not wake each
// other; the channel itself is database-wide.
const pgNotify = `SELECT pg_notify($1, coalesce(current_schema(), ''))`

// pgStore implements Store on PostgreSQL.
type pgStore struct {
	pool      *pgxpool.Pool
	listenCfg *pgx.ConnConfig // for the dedicated LISTEN connection
	log       *slog.Logger
	wc        *committer[pgWrite] // group commit for Enqueue and Finish
	wake      chan struct{}       // Wakeups, buffered 1
	health    health              // whether writes commit (Ping)

	listenCtx   context.Context    // the listener's lifetime
	stopListen  context.CancelFunc // ends the listener
	listenDone  chan struct{}      // closed when the listener returned (or never started)
	startListen sync.Once          // starts the listener on the first Wakeups call

	countsFolded atomic.Int64 // when Stats last compacted queue_counts (unix ns)
	vac          *bodyVacuum  // VACUUMs of message_bodies (postgres_vacuum.go)

	closeOnce sync.Once
}

// openPostgres creates the pool (connections are made on first use). The
// LISTEN connection starts with the first Wakeups call, so admin commands
// that never wait for mail open no second connection.
func openPostgres(_ context.Context, url string) (*pgStore, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: parse database url: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = pgConnectTimeout
	}
	// pgxpool's default (max(4, CPUs)) is small for a gateway whose SMTP
	// sessions, relay workers and group committer share the pool.
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = pgDefaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, pgErr("open postgres", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	s := &pgStore{
		pool:       pool,
		listenCfg:  cfg.ConnConfig.Copy(),
		log:        slog.Default().With("component", "store"),
		wake:       make(chan struct{}, 1),
		listenCtx:  lctx,
		stopListen: cancel,
		listenDone: make(chan struct{}),
		vac:        newBodyVacuum(),
	}
	spec := pairSpec(messageSpec(nil, s.wake, &s.health), finishSpec(nil, s.wake, &s.health), s.writeBatch)
	spec.spacing, spec.spaceFull = pgSpacing, pgSpaceFull
	// Messages, which sessions wait for, show the pace; an outcome queued
	// beside a lone session's next message does not.
	spec.spaces = func(it either[*Message, *finishOp]) bool { return !it.isB }
	s.wc = newCommitter(spec)
	return s, nil
}

// pgErr wraps err for operation op, mapping it to the sentinel errors.
func pgErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("%s: %w", op, err)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505": // unique_violation
			return fmt.Errorf("%s: %w: %w", op, ErrExists, err)
		case strings.HasPrefix(pe.Code, "08"), // connection_exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, cannot_connect_now
			pe.Code == "53300", // too_many_connections
			pe.Code == "25006": // read_only_sql_transaction: a standby
			return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	if pgUnreachable(err) {
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// pgUnreachable reports whether err (not a server error) means the database
// could not be reached or the connection broke.
func pgUnreachable(err error) bool {
	var (
		ce *pgconn.ConnectError
		ne net.Error
	)
	return errors.As(err, &ce) || errors.As(err, &ne) ||
		errors.Is(err, puddle.ErrClosedPool) || errors.Is(err, pgconn.ErrConnClosed) ||
		pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// inTx runs fn in a transaction and commits it.
func (s *pgStore) inTx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	return pgErr(op, pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{}, fn))
}

// listen keeps a LISTEN connection open until ctx ends, reconnecting with
// backoff, and turns notifications into wakeups.
func (s *pgStore) listen(ctx context.Context) {
	defer close(s.listenDone)
	backoff := listenBackoffMin
	failures := 0
	for {
		connected, err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			backoff, failures = listenBackoffMin, 0
		}
		failures++
		// Log the first failure of a streak and then every 20th, not a line
		// per retry while the database is down.
		if failures == 1 || failures%20 == 0 {
			s.log.Warn("postgres listener disconnected, retrying", "err", err, "failures", failures)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, listenBackoffMax)
	}
}

// listenOnce connects, LISTENs and waits for notifications until the
// connection fails or ctx ends. connected reports whether LISTEN succeeded.
func (s *pgStore) listenOnce(ctx context.Context) (connected bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.listenCfg)
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if cerr := conn.Close(cctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	var schema string
	if err := conn.QueryRow(ctx, `SELECT coalesce(current_schema(), '')`).Scan(&schema); err != nil {
		return false, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return false, err
	}
	// Notifications sent while we were not listening are lost: look again.
	wake(s.wake)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		if n.Payload == "" || n.Payload == schema {
			wake(s.wake)
		}
	}
}

// Migrate implements Store. Each migration runs in its own transaction
// holding an advisory lock (per schema), so nodes starting together apply
// each migration exactly once.
func (s *pgStore) Migrate(ctx context.Context) error {
	ms, err := loadMigrations("postgres")
	if err != nil {
		return err
	}
	for _, m := range ms {
		err := s.inTx(ctx, "migrate "+m.Name, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('smtpgw migrate ' || coalesce(current_schema(), '')))`); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
				version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				return err
			}
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, m.Version).Scan(&done); err != nil {
				return err
			}
			if done {
				return nil
			}
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, m.Version)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Ping implements Store.
func (s *pgStore) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return pgErr("ping postgres", err)
	}
	return s.health.check(ctx, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, pgWriteProbe, time.Now().UnixMicro())
		return pgErr("ping postgres: write", err)
	})
}

// pgWriteProbe is Ping's write while writes fail (store/health.go).
const pgWriteProbe = `INSERT INTO write_probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at`

// Close implements Store.
func (s *pgStore) Close() error {
	s.closeOnce.Do(func() {
		s.wc.close()
		s.vac.stop()
		s.stopListen()
		s.startListen.Do(func() { close(s.listenDone) }) // never started
		<-s.listenDone
		s.pool.Close()
	})
	return nil
}

// Wakeups implements Store.
func (s *pgStore) Wakeups() <-chan struct{} {
	s.startListen.Do(func() { go s.listen(s.listenCtx) })
	return s.wake
}

// pgArgs collects positional arguments for a query built at run time.
type pgArgs []any

// add appends v and returns its placeholder.
func (a *pgArgs) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// nullTime is t, or NULL for the zero time.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return utc(t)
}

// fromNullTime converts a nullable timestamptz; NULL is the zero time.
func fromNullTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// API keys.

const pgKeyCols = `id, label, grants, short_key, hash, subaccount, allowed_ips,
	created_at, updated_at, last_used_at, revoked_at, expires_at, last_used_ip`

func scanPGKey(row pgx.Row) (*Key, error) {
	var (
		k                 Key
		grants, ips       []string
		lastUsed, revoked *time.Time
		expires           *time.Time
		lastIP            string
	)
	if err := row.Scan(&k.ID, &k.Label, &grants, &k.ShortKey, &k.Hash, &k.Subaccount, &ips,
		&k.CreatedAt, &k.UpdatedAt, &lastUsed, &revoked, &expires, &lastIP); err != nil {
		return nil, err
	}
	k.CreatedAt, k.UpdatedAt = k.CreatedAt.UTC(), k.UpdatedAt.UTC()
	k.LastUsedAt, k.RevokedAt = fromNullTime(lastUsed), fromNullTime(revoked)
	k.ExpiresAt = fromNullTime(expires)
	k.LastUsedIP = parseStoredAddr(lastIP)
	return &k, keyFromParts(&k, grants, ips)
}

// nonNil returns ss, or an empty list for nil (the columns are NOT NULL).
func nonNil(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

// CreateKey implements Store.
func (s *pgStore) CreateKey(ctx context.Context, k *Key) error {
	if len(k.Hash) == 0 {
		return errors.New("create key: no hash")
	}
	if k.ID == "" {
		k.ID = NewKeyID()
	}
	now := utc(time.Now())
	_, err := s.pool.Exec(ctx, `INSERT INTO api_keys (`+pgKeyCols+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12)`,
		k.ID, k.Label, nonNil(k.Grants), k.ShortKey, k.Hash, k.Subaccount, prefixStrings(k.AllowedIPs),
		now, nullTime(k.LastUsedAt), nullTime(k.RevokedAt), nullTime(k.ExpiresAt), addrString(k.LastUsedIP))
	if err != nil {
		return pgErr("create key", err)
	}
	k.CreatedAt, k.UpdatedAt = now, now
	return nil
}

// GetKey implements Store.
func (s *pgStore) GetKey(ctx context.Context, id string) (*Key, error) {
	k, err := scanPGKey(s.pool.QueryRow(ctx, `SELECT `+pgKeyCols+` FROM api_keys WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get key %s: %w", id, ErrNotFound)
	}
	return k, pgErr("get key", err)
}

// KeyByHash implements Store.
func (s *pgStore) KeyByHash(ctx context.Context, hash []byte) (*Key, error) {
	k, err := scanPGKey(s.pool.QueryRow(ctx, `SELECT `+pgKeyCols+` FROM api_keys WHERE hash = $1`, hash))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("key by hash: %w", ErrNotFound)
	}
	return k, pgErr("key by hash", err)
}

// UpdateKey implements Store.
func (s *pgStore) UpdateKey(ctx context.Context, k *Key) error {
	now := utc(time.Now())
	tag, err := s.pool.Exec(ctx, `UPDATE api_keys SET label = $1, grants = $2, subaccount = $3,
		allowed_ips = $4, expires_at = $5, updated_at = $6 WHERE id = $7 AND revoked_at IS NULL`,
		k.Label, nonNil(k.Grants), k.Subaccount, prefixStrings(k.AllowedIPs), nullTime(k.ExpiresAt), now, k.ID)
	if err := pgOneRow("update key", k.ID, tag, err); err != nil {
		return err
	}
	k.UpdatedAt = now
	return nil
}

// pgOneRow turns an Exec that changed no row into ErrNotFound.
func pgOneRow(op, id string, tag pgconn.CommandTag, err error) error {
	if err != nil {
		return pgErr(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s %s: %w", op, id, ErrNotFound)
	}
	return nil
}

// RevokeKey implements Store.
func (s *pgStore) RevokeKey(ctx context.Context, id string) error {
	now := utc(time.Now())
	tag, err := s.pool.Exec(ctx, `UPDATE api_keys SET revoked_at = $1, updated_at = $1
		WHERE id = $2 AND revoked_at IS NULL`, now, id)
	return pgOneRow("revoke key", id, tag, err)
}

// TouchKey implements Store. The last-used time never goes back; the
// address changes only with a later use.
func (s *pgStore) TouchKey(ctx context.Context, id string, at time.Time, ip netip.Addr) error {
	tag, err := s.pool.Exec(ctx, `UPDATE api_keys SET
		last_used_ip = CASE WHEN last_used_at IS NULL OR last_used_at <= $1 THEN $2 ELSE last_used_ip END,
		last_used_at = greatest(last_used_at, $1)
		WHERE id = $3`, utc(at), addrString(ip), id)
	return pgOneRow("touch key", id, tag, err)
}

// Queue.

// Enqueue implements Store.
func (s *pgStore) Enqueue(ctx context.Context, m *Message) error {
	if err := prepareMessage(m, time.Now()); err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	return s.wc.add(ctx, pgWrite{a: m})
}

// Arriving implements Store. PostgreSQL's batches do not wait for
// announced messages: measured against the same load, waiting saved
// PostgreSQL no CPU and cost the gateway wakeups (docs/benchmarks.md).
func (s *pgStore) Arriving() (done func()) { return func() {} }

// CommitStats implements Store.
func (s *pgStore) CommitStats() CommitStats { return s.wc.stats() }

// pgWrite is an item of the group committer: a message to enqueue or the
// outcomes of a Finish call.
type pgWrite = either[*Message, *finishOp]

// writeBatch is the group committer's batch writer: new messages and
// delivery outcomes that arrived together share one transaction (one
// commit, one WAL flush), usually one round trip between BEGIN and COMMIT.
// A COMMIT whose answer is lost is resolved (pgCommitTx): the waiters learn
// whether their messages and outcomes are stored. more is nil: PostgreSQL's
// committer takes no late items (a second round trip before COMMIT would
// cost what it saves).
func (s *pgStore) writeBatch(ctx context.Context, msgs []*Message, ops []*finishOp, _ func() ([]*Message, []*finishOp)) error {
	err := s.pgCommitTx(ctx, "write batch", func(tx pgTx, st *pgTxStart) error {
		return writeFinishes(ctx, tx, st, ops, msgs)
	})
	if err == nil && len(ops) > 0 {
		s.finalized(len(finalRecipientIDs(ops)))
	}
	return err
}

const pgEventInsert = `INSERT INTO events (type, time, message_id, key_id, subaccount, recipient,
	campaign_id, metadata, tags, reply, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id`

// queueEvents adds the inserts of evs to b.
func queueEvents(b *pgx.Batch, evs []Event) error {
	for i := range evs {
		e := &evs[i]
		detail, err := e.encodedDetail()
		if err != nil {
			return err
		}
		var meta any
		if len(e.Metadata) > 0 {
			meta = json.RawMessage(e.Metadata)
		}
		var tags any
		if e.Tags != nil {
			tags = e.Tags
		}
		b.Queue(pgEventInsert, e.Type, utc(e.Time), e.MessageID, e.KeyID, e.Subaccount, e.Recipient,
			e.CampaignID, meta, tags, e.Reply, detail)
	}
	return nil
}

// readEvents reads the ids of events queued by queueEvents.
func readEvents(br pgx.BatchResults, evs []Event) error {
	for i := range evs {
		if err := br.QueryRow().Scan(&evs[i].ID); err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
	}
	return nil
}

const pgRcptCols = `r.id, r.message_id, r.address, r.domain, r.state, r.attempts, r.next_attempt,
	r.last_reply, r.dsn_notify, r.dsn_orcpt, r.updated_at`

// rcptDest returns scan destinations for pgRcptCols.
func rcptDest(r *Recipient) []any {
	return []any{&r.ID, &r.MessageID, &r.Address, &r.Domain, &r.State, &r.Attempts, &r.NextAttempt,
		&r.LastReply, &r.DSNNotify, &r.DSNOrcpt, &r.UpdatedAt}
}

// utcRcpt normalises the scanned times of r.
func utcRcpt(r *Recipient) {
	r.NextAttempt, r.UpdatedAt = r.NextAttempt.UTC(), r.UpdatedAt.UTC()
}

// pgClaimDue leases due recipients: $1 owner, $2 lease end, $3 now, $4
// limit; ClaimDue puts its filters at pgClaimFilter: the domains to skip,
// if there are any (a filter on an empty list would make the planner
// expect no row at all and sort whatever it reads), and the message whose
// rest it claims. Queued and deferred recipients are read apart, each
// branch through recipients_due (state, next_attempt, id) in the order the
// claim wants and stopping at the limit, then merged: one claim no longer
// sorts every due recipient of the queue (issue 12). Each branch may lock
// up to the limit; the locks of rows the merge leaves out end with the
// statement. The exclusion is a filter on the rows the index scan yields
// (TestClaimExcludePlan checks the plan).
var pgClaimDue = `WITH due AS (
			SELECT * FROM (` + pgClaimBranch + `) q
			UNION ALL
			SELECT * FROM (` + strings.Replace(pgClaimBranch, `state = 'queued'`, `state = 'deferred'`, 1) + `) d
			ORDER BY next_attempt, id
			LIMIT $4)
		UPDATE recipients r SET lease_owner = $1, lease_until = $2
		FROM due, messages m
		WHERE r.id = due.id AND m.id = r.message_id
		RETURNING ` + pgRcptCols + `, m.mail_from, m.key_id, m.subaccount, m.campaign_id,
			m.body_type, m.smtputf8, m.dsn_ret, m.dsn_envid, m.created_at, m.msys_api, m.info, m.size, ` + pgBodyExpr

// pgClaimBranch selects the due queued recipients to lease (and, with
// 'deferred' for 'queued', the deferred ones).
const (
	pgClaimFilter = `/*filter*/`
	pgClaimBranch = `SELECT id, next_attempt FROM recipients
				WHERE state = 'queued' AND next_attempt <= $3
					AND (lease_until IS NULL OR lease_until <= $3) ` + pgClaimFilter + `
				ORDER BY next_attempt, id
				LIMIT $4
				FOR UPDATE SKIP LOCKED`
)

// pgClaimSQL returns the claim query with filter (conditions on
// recipients, each starting with AND) in both branches.
func pgClaimSQL(filter string) string {
	return strings.ReplaceAll(pgClaimDue, pgClaimFilter, filter)
}

// pgClaimHint runs before the claim, in the same implicit transaction (one
// pipelined batch): the claim is prepared once per connection, and a
// generic plan cached while the queue was small would sort every due
// recipient instead of reading recipients_due in order; and it is not
// compiled (JIT), whatever its estimated cost (see pgBatchTxStart).
const pgClaimHint = `SELECT set_config('enable_seqscan', 'off', true) || set_config('enable_bitmapscan', 'off', true)
	|| set_config('enable_hashjoin', 'off', true) || set_config('enable_mergejoin', 'off', true)
	|| set_config('jit', 'off', true)`

// ClaimDue implements Store.
func (s *pgStore) ClaimDue(ctx context.Context, owner string, o ClaimOptions) ([]*Claimed, error) {
	if owner == "" || o.Limit <= 0 || o.Lease <= 0 {
		return nil, fmt.Errorf("claim due: need an owner, a positive limit and a positive lease")
	}
	now := utc(time.Now())
	args := pgArgs{owner, now.Add(o.Lease), now, o.Limit}
	filter := ""
	if len(o.ExcludeDomains) > 0 {
		filter = "AND domain <> ALL(" + args.add(o.ExcludeDomains) + "::text[]) "
	}
	if o.MessageID != "" {
		// The rest of one message: found through its recipients, not the
		// due index.
		filter += "AND message_id = " + args.add(o.MessageID) + " "
		if o.Domain != "" {
			filter += "AND domain = " + args.add(o.Domain) + " "
		}
	}
	b := &pgx.Batch{}
	b.Queue(pgClaimHint)
	b.Queue(pgClaimSQL(filter), args...)
	br := s.pool.SendBatch(ctx, b)
	out, err := func() ([]*Claimed, error) {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
		rows, err := br.Query()
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Claimed, error) {
			c := &Claimed{}
			var msys, info *string
			dest := append(rcptDest(&c.Recipient), &c.MailFrom, &c.KeyID, &c.Subaccount, &c.CampaignID,
				&c.BodyType, &c.SMTPUTF8, &c.DSNRet, &c.DSNEnvID, &c.CreatedAt, &msys, &info, &c.Size, &c.Body)
			if err := row.Scan(dest...); err != nil {
				return nil, err
			}
			if info != nil {
				if err := decodeInfo([]byte(*info), &c.Info); err != nil {
					return nil, err
				}
			}
			if msys != nil {
				c.MsysAPI = json.RawMessage(*msys)
			}
			utcRcpt(&c.Recipient)
			c.CreatedAt = c.CreatedAt.UTC()
			return c, nil
		})
	}()
	// Close ends the implicit transaction: the leases are stored only if
	// it succeeds.
	if err := errors.Join(err, br.Close()); err != nil {
		return nil, pgErr("claim due", err)
	}
	sortClaimed(out)
	return out, nil
}

// MessageBody implements Store.
func (s *pgStore) MessageBody(ctx context.Context, id string) ([]byte, error) {
	var b []byte
	err := s.pool.QueryRow(ctx, `SELECT `+pgBodyExpr+` FROM messages m WHERE m.id = $1`, id).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("message body %s: %w", id, ErrNotFound)
	}
	return b, pgErr("message body", err)
}

// Finish implements Store. Concurrent calls share a transaction, with
// the messages being enqueued (see writeBatch).
func (s *pgStore) Finish(ctx context.Context, owner string, f Finish) (int, error) {
	op, err := newFinishOp(owner, f, time.Now())
	if err != nil {
		return 0, err
	}
	if err := s.wc.add(ctx, pgWrite{b: op, isB: true}); err != nil {
		return 0, err
	}
	return op.applied, nil
}

// pgFinishUpdate applies one outcome if the recipient is still leased to
// the owner.
const pgFinishUpdate = `UPDATE recipients SET state = $1,
	next_attempt = CASE WHEN $2 THEN $3 ELSE next_attempt END,
	last_reply = $4, attempts = attempts + 1, lease_owner = NULL, lease_until = NULL,
	updated_at = $5
	WHERE id = $6 AND lease_owner = $7`

// writeFinishes writes, in tx, the outcomes, events and new messages of
// ops, and the messages msgs. Usually in the one batch st (sent with the
// statement that learns the transaction id): the outcomes, the body drop,
// every op's events and msgs. If a lease was lost, the events of its
// recipient are deleted again (another worker owns it now and reports it);
// the ops' new messages (DSNs) are written once it is known which ops
// applied something. A batch naming a recipient twice takes a slower path.
func writeFinishes(ctx context.Context, tx pgTx, st *pgTxStart, ops []*finishOp, msgs []*Message) error {
	outs := newPGOutcomes(ops)
	var (
		evs     []Event
		evOwner []*finishOp // of each event in evs
	)
	for _, op := range ops {
		evs = append(evs, op.evs...)
		for range op.evs {
			evOwner = append(evOwner, op)
		}
	}
	finals := finalRecipientIDs(ops)
	fast := !outs.dup
	var readMsgs func(pgx.BatchResults) error
	if fast {
		if len(outs.ids) > 0 {
			outs.queue(&st.Batch)
		}
		if len(finals) > 0 {
			st.Queue(pgDropBodies, finals)
		}
		if err := queueBulkEvents(&st.Batch, evs); err != nil {
			return err
		}
	}
	if len(msgs) > 0 {
		var err error
		if readMsgs, err = queuePGMessages(&st.Batch, msgs, nil, true); err != nil {
			return err
		}
	}
	br, err := st.send(ctx, tx)
	if err != nil {
		return err
	}
	applied, eids := map[int64]bool{}, []int64(nil)
	if fast {
		err = func() error {
			var err error
			if len(outs.ids) > 0 {
				if applied, err = outs.read(br); err != nil {
					return err
				}
			}
			if len(finals) > 0 {
				if _, err := br.Exec(); err != nil {
					return fmt.Errorf("drop delivered bodies: %w", err)
				}
			}
			if len(evs) > 0 {
				eids, err = readIDs(br, len(evs), "events")
			}
			return err
		}()
	}
	if err == nil && readMsgs != nil {
		err = readMsgs(br)
	}
	if err := errors.Join(err, br.Close()); err != nil {
		return err
	}
	if len(ops) == 0 {
		return nil
	}
	if !fast {
		if applied, err = outs.writeDup(ctx, tx); err != nil {
			return err
		}
	}
	stale, err := staleRecipients(ctx, tx, countApplied(ops, applied))
	if err != nil {
		return err
	}
	var dsns []*Message
	for _, op := range ops {
		if op.writesMessages() && len(op.f.Enqueue) > 0 {
			dsns = append(dsns, op.f.Enqueue...)
			op.wrote = true
		}
	}
	if !fast {
		if len(finals) > 0 {
			if _, err := tx.Exec(ctx, pgDropBodies, finals); err != nil {
				return fmt.Errorf("drop delivered bodies: %w", err)
			}
		}
		var keep []Event
		for _, op := range ops {
			keep = append(keep, dropStaleEvents(op.evs, stale[op])...)
		}
		return insertPGMessages(ctx, tx, dsns, keep, true)
	}
	if len(stale) > 0 {
		var drop []int64
		for i, e := range evs {
			if e.Recipient != "" && stale[evOwner[i]][staleRecipient{e.MessageID, e.Recipient}] {
				drop = append(drop, eids[i])
			}
		}
		if len(drop) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM events WHERE id = ANY($1::bigint[])`, drop); err != nil {
				return fmt.Errorf("drop events of lost leases: %w", err)
			}
		}
	}
	return insertPGMessages(ctx, tx, dsns, nil, true)
}

// staleRecipients returns, per op, who the recipients of lost are (those
// still stored), to drop their events.
func staleRecipients(ctx context.Context, tx pgTx, lost []lostLease) (map[*finishOp]map[staleRecipient]bool, error) {
	stale := map[*finishOp]map[staleRecipient]bool{}
	if len(lost) == 0 {
		return stale, nil
	}
	b := &pgx.Batch{}
	for _, l := range lost {
		b.Queue(`SELECT message_id, address FROM recipients WHERE id = $1`, l.id)
	}
	br := tx.SendBatch(ctx, b)
	var err error
	for _, l := range lost {
		var sr staleRecipient
		err = br.QueryRow().Scan(&sr.messageID, &sr.address)
		if errors.Is(err, pgx.ErrNoRows) {
			err = nil // deleted: nobody else reports it
			continue
		}
		if err != nil {
			break
		}
		if stale[l.op] == nil {
			stale[l.op] = map[staleRecipient]bool{}
		}
		stale[l.op][sr] = true
	}
	if err := errors.Join(err, br.Close()); err != nil {
		return nil, err
	}
	return stale, nil
}

// Queue administration.

const pgMsgCols = `m.id, m.key_id, m.subaccount, m.mail_from, m.size, m.smtputf8, m.body_type, m.dsn_ret,
	m.dsn_envid, m.campaign_id, m.msys_api, m.created_at`

func scanPGMsg(row pgx.Row, extra ...any) (*Message, error) {
	var (
		m    Message
		msys *string
	)
	dest := append([]any{&m.ID, &m.KeyID, &m.Subaccount, &m.MailFrom, &m.Size, &m.SMTPUTF8, &m.BodyType,
		&m.DSNRet, &m.DSNEnvID, &m.CampaignID, &msys, &m.CreatedAt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	if msys != nil {
		m.MsysAPI = []byte(*msys)
	}
	m.CreatedAt = m.CreatedAt.UTC()
	return &m, nil
}

// pgRecipients returns the recipients of the given messages, by message id.
func pgRecipients(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, ids []string) (map[string][]*Recipient, error) {
	rows, err := q.Query(ctx, `SELECT `+pgRcptCols+` FROM recipients r
		WHERE r.message_id = ANY($1) ORDER BY r.id`, ids)
	if err != nil {
		return nil, err
	}
	rs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Recipient, error) {
		r := &Recipient{}
		if err := row.Scan(rcptDest(r)...); err != nil {
			return nil, err
		}
		utcRcpt(r)
		return r, nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string][]*Recipient{}
	for _, r := range rs {
		out[r.MessageID] = append(out[r.MessageID], r)
	}
	return out, nil
}

// ListMessages implements Store.
func (s *pgStore) ListMessages(ctx context.Context, f QueueFilter) ([]*Message, error) {
	var (
		args  pgArgs
		where []string
	)
	if f.State != "" {
		where = append(where, `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = `+args.add(f.State)+`)`)
	}
	if f.Domain != "" {
		where = append(where, `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.domain = `+args.add(normDomain(f.Domain))+`)`)
	}
	if f.KeyID != "" {
		where = append(where, `m.key_id = `+args.add(f.KeyID))
	}
	if f.Subaccount != nil {
		where = append(where, `m.subaccount = `+args.add(*f.Subaccount))
	}
	q := `SELECT ` + pgMsgCols + ` FROM messages m`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	order := ` ORDER BY m.created_at DESC, m.id DESC`
	if f.OldestFirst {
		order = ` ORDER BY m.created_at, m.id`
	}
	q += order + ` LIMIT ` + args.add(limitOr(f.Limit, 1000))

	var msgs []*Message
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		msgs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Message, error) { return scanPGMsg(row) })
		if err != nil || len(msgs) == 0 {
			return err
		}
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		byMsg, err := pgRecipients(ctx, tx, ids)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			m.Recipients = byMsg[m.ID]
		}
		return nil
	})
	if err != nil {
		return nil, pgErr("list messages", err)
	}
	return msgs, nil
}

// GetMessage implements Store.
func (s *pgStore) GetMessage(ctx context.Context, id string) (*Message, error) {
	var m *Message
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		var body []byte
		var err error
		m, err = scanPGMsg(tx.QueryRow(ctx, `SELECT `+pgMsgCols+`, `+pgBodyExpr+` FROM messages m WHERE m.id = $1`, id), &body)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		m.Body = body
		byMsg, err := pgRecipients(ctx, tx, []string{id})
		if err != nil {
			return err
		}
		m.Recipients = byMsg[id]
		return nil
	})
	if err != nil {
		return nil, pgErr("get message", err)
	}
	return m, nil
}

// RetryMessage implements Store.
func (s *pgStore) RetryMessage(ctx context.Context, id string) (int, error) {
	now := utc(time.Now())
	n, err := s.updateAndWake(ctx, "retry message", func(tx pgx.Tx) (int64, error) {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)`, id).Scan(&exists); err != nil {
			return 0, err
		}
		if !exists {
			return 0, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		tag, err := tx.Exec(ctx, `UPDATE recipients SET next_attempt = $1, updated_at = $1
			WHERE message_id = $2 AND state IN ('queued', 'deferred')`, now, id)
		return tag.RowsAffected(), err
	})
	return int(n), err
}

// updateAndWake runs fn in a transaction. When fn made recipients due (it
// returns how many), the transaction also NOTIFYs the other nodes, and this
// node's relay is woken once it committed.
func (s *pgStore) updateAndWake(ctx context.Context, op string, fn func(tx pgx.Tx) (int64, error)) (int64, error) {
	var n int64
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		var err error
		if n, err = fn(tx); err != nil || n == 0 {
			return err
		}
		_, err = tx.Exec(ctx, pgNotify, notifyChannel)
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
func (s *pgStore) DeleteMessage(ctx context.Context, id string) error {
	// No foreign keys (migrations 0012, 0014): the body and the recipients
	// go in the same statement.
	tag, err := s.pool.Exec(ctx, `WITH b AS (DELETE FROM message_bodies WHERE message_id = $1),
			r AS (DELETE FROM recipients WHERE message_id = $1)
		DELETE FROM messages WHERE id = $1`, id)
	return pgOneRow("delete message", id, tag, err)
}

// Stats implements Store. It first folds queue_counts' deltas into a row
// per state (compactQueueCounts), at most once per pgFoldCountsEvery in
// this process: the group committer appends a delta row per statement,
// several per transaction, and PruneMessages folds them only once a
// minute, so a /metrics scrape would otherwise sum up to a minute of
// traffic (36,000 rows after 30 s at 700 msg/s: 10 ms per scrape, growing
// with the rate). Folding deletes the rows once instead of summing them
// at every scrape. If it fails, the sum is still right.
func (s *pgStore) Stats(ctx context.Context) (QueueStats, error) {
	if last := s.countsFolded.Load(); time.Since(time.Unix(0, last)) >= pgFoldCountsEvery &&
		s.countsFolded.CompareAndSwap(last, time.Now().UnixNano()) {
		if err := s.compactQueueCounts(ctx); err != nil && ctx.Err() == nil {
			s.log.Debug("fold queue counts", "err", err)
		}
	}
	st := QueueStats{ByState: map[string]int64{}}
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT state, sum(n)::bigint FROM queue_counts GROUP BY state HAVING sum(n) <> 0`)
		if err != nil {
			return err
		}
		var (
			state string
			n     int64
		)
		if _, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error {
			st.ByState[state] = n
			return nil
		}); err != nil {
			return err
		}
		var oldest *time.Time
		if err := tx.QueryRow(ctx, pgOldestWaiting).Scan(&oldest); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		st.OldestQueued = fromNullTime(oldest)
		return nil
	})
	return st, pgErr("queue stats", err)
}

// Events.

// AddEvents implements Store.
func (s *pgStore) AddEvents(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}
	prepareEvents(evs, time.Now())
	return s.inTx(ctx, "add events", func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		if err := queueEvents(b, evs); err != nil {
			return err
		}
		br := tx.SendBatch(ctx, b)
		return errors.Join(readEvents(br, evs), br.Close())
	})
}

// ListEvents implements Store.
func (s *pgStore) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	var (
		args  pgArgs
		where []string
	)
	if f.MessageID != "" {
		where = append(where, `message_id = `+args.add(f.MessageID))
	}
	if f.KeyID != "" {
		where = append(where, `key_id = `+args.add(f.KeyID))
	}
	if f.Subaccount != nil {
		where = append(where, `subaccount = `+args.add(*f.Subaccount))
	}
	if len(f.Types) > 0 {
		where = append(where, `type = ANY(`+args.add(f.Types)+`)`)
	}
	if !f.Since.IsZero() {
		where = append(where, `time >= `+args.add(utc(f.Since)))
	}
	q := `SELECT ` + pgEventCols + ` FROM events`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY time DESC, id DESC LIMIT ` + args.add(limitOr(f.Limit, 1000))
	return s.queryEvents(ctx, "list events", q, args...)
}

// pgEventCols are the columns scanPGEvent reads.
const pgEventCols = `id, type, time, message_id, key_id, subaccount, recipient, campaign_id, metadata, tags, reply, detail`

// queryEvents runs q, which selects pgEventCols, and scans its rows.
func (s *pgStore) queryEvents(ctx context.Context, op, q string, args ...any) ([]Event, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, pgErr(op, err)
	}
	evs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		return scanPGEvent(row)
	})
	return evs, pgErr(op, err)
}

// scanPGEvent reads one row of pgEventCols.
func scanPGEvent(row pgx.Row) (Event, error) {
	var (
		e      Event
		meta   []byte
		detail *string
	)
	if err := row.Scan(&e.ID, &e.Type, &e.Time, &e.MessageID, &e.KeyID, &e.Subaccount, &e.Recipient,
		&e.CampaignID, &meta, &e.Tags, &e.Reply, &detail); err != nil {
		return e, err
	}
	e.Time = e.Time.UTC()
	if meta != nil {
		e.Metadata = meta
	}
	if detail != nil {
		if err := decodeDetail([]byte(*detail), &e.Detail); err != nil {
			return e, fmt.Errorf("event %d: %w", e.ID, err)
		}
	}
	return e, nil
}

// PruneEvents implements Store.
func (s *pgStore) PruneEvents(ctx context.Context, before time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM events WHERE time < $1`, utc(before))
	if err != nil {
		return 0, pgErr("prune events", err)
	}
	return tag.RowsAffected(), nil
}

// Sending domains.

const pgDomainCols = `name, subaccount, shared, selector, algorithm, private_key, public_key, created_at`

func scanPGDomain(row pgx.Row) (*Domain, error) {
	var d Domain
	if err := row.Scan(&d.Name, &d.Subaccount, &d.Shared, &d.Selector, &d.Algorithm, &d.PrivateKey,
		&d.PublicKey, &d.CreatedAt); err != nil {
		return nil, err
	}
	d.CreatedAt = d.CreatedAt.UTC()
	return &d, nil
}

// CreateDomain implements Store.
func (s *pgStore) CreateDomain(ctx context.Context, d *Domain) error {
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
	_, err := s.pool.Exec(ctx, `INSERT INTO domains (`+pgDomainCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		d.Name, d.Subaccount, d.Shared, d.Selector, d.Algorithm, pk, d.PublicKey, d.CreatedAt)
	return pgErr("create domain", err)
}

// GetDomain implements Store.
func (s *pgStore) GetDomain(ctx context.Context, name string) (*Domain, error) {
	d, err := scanPGDomain(s.pool.QueryRow(ctx, `SELECT `+pgDomainCols+` FROM domains WHERE name = $1`, normDomain(name)))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get domain %s: %w", name, ErrNotFound)
	}
	return d, pgErr("get domain", err)
}

// ListDomains implements Store.
func (s *pgStore) ListDomains(ctx context.Context) ([]*Domain, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+pgDomainCols+` FROM domains ORDER BY name`)
	if err != nil {
		return nil, pgErr("list domains", err)
	}
	ds, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Domain, error) { return scanPGDomain(row) })
	return ds, pgErr("list domains", err)
}

// DeleteDomain implements Store.
func (s *pgStore) DeleteDomain(ctx context.Context, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM domains WHERE name = $1`, normDomain(name))
	return pgOneRow("delete domain", name, tag, err)
}
