package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/smtpgw/smtpgw/internal/pgtest"
)

// The contract suite: every test runs against both backends, as parallel
// subtests "sqlite" and "postgres", each on its own file or schema.

// env is one backend under test.
type env struct {
	name string
	s    Store
	url  string // PostgreSQL url ("" for SQLite)
	dir  string // SQLite data directory ("" for PostgreSQL)
}

// openEnv opens and migrates a fresh store of the named backend, closed
// when the test ends.
func openEnv(t testing.TB, backend string) *env {
	t.Helper()
	e := &env{name: backend}
	switch backend {
	case "sqlite":
		e.dir = t.TempDir()
	case "postgres":
		e.url = pgtest.URL(t)
	}
	e.s = openStore(t, e.url, e.dir)
	return e
}

// openStore opens and migrates a store, closed when the test ends.
func openStore(t testing.TB, url, dir string) Store {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, url, dir)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s
}

// both runs fn as parallel subtests against each backend.
func both(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Parallel()
	for _, b := range []string{"sqlite", "postgres"} {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			fn(t, openEnv(t, b))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func hashOf(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// newMsg returns a message with n recipients at example.com and
// example.org alternately.
func newMsg(n int) *Message {
	m := &Message{
		ID:         NewID(),
		KeyID:      "k1",
		Subaccount: 7,
		MailFrom:   "sender@example.net",
		Body:       []byte("Subject: hi\r\n\r\nhello\r\n"),
		BodyType:   "8BITMIME",
		DSNRet:     "HDRS",
		DSNEnvID:   "env-1",
		CampaignID: "spring",
		MsysAPI:    json.RawMessage(`{"campaign_id":"spring","metadata":{"user":"u1","n":2},"tags":["a","b"]}`),
	}
	for i := 0; i < n; i++ {
		d := "example.com"
		if i%2 == 1 {
			d = "example.org"
		}
		m.Recipients = append(m.Recipients, &Recipient{
			Address:   fmt.Sprintf("rcpt%d@%s", i, d),
			Domain:    d,
			DSNNotify: "FAILURE,DELAY",
			DSNOrcpt:  fmt.Sprintf("rfc822;rcpt%d@%s", i, d),
		})
	}
	return m
}

func mustEnqueue(t *testing.T, s Store, m *Message) {
	t.Helper()
	if err := s.Enqueue(ctxT(t), m); err != nil {
		t.Fatalf("enqueue %s: %v", m.ID, err)
	}
}

func TestIDs(t *testing.T) {
	t.Parallel()
	idRe := regexp.MustCompile(`^[0-9a-f]{20}$`)
	keyRe := regexp.MustCompile(`^[0-9a-f]{16}$`)
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 1000; i++ {
		id := NewID()
		if !idRe.MatchString(id) {
			t.Fatalf("NewID() = %q, want 20 lowercase hex", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
		if prev != "" && id[:12] < prev[:12] {
			t.Fatalf("NewID() time prefix went back: %q after %q", id, prev)
		}
		prev = id
		if k := NewKeyID(); !keyRe.MatchString(k) {
			t.Fatalf("NewKeyID() = %q, want 16 lowercase hex", k)
		}
	}
	ms := time.Now().UnixMilli()
	var got int64
	if _, err := fmt.Sscanf(NewID()[:12], "%x", &got); err != nil {
		t.Fatal(err)
	}
	if d := got - ms; d < -1000 || d > 1000 {
		t.Errorf("NewID time prefix %d, now %d", got, ms)
	}
}

func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	for _, u := range []string{"mysql://x", "sqlite:///tmp/x.db", "/tmp/x.db"} {
		_, err := Open(ctx, u, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), "postgres://") {
			t.Errorf("Open(%q) = %v, want an error naming the accepted schemes", u, err)
		}
	}
	if !IsPostgresURL("postgres://a/b") || !IsPostgresURL("postgresql://a/b") || IsPostgresURL("") {
		t.Error("IsPostgresURL")
	}

	// A data directory under a file cannot be created.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(f, "data")
	if _, err := Open(ctx, "", bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("Open in %s = %v, want an error naming the path", bad, err)
	}

	// A missing data directory is created 0700, the file is 0600.
	dir := filepath.Join(t.TempDir(), "a", "data")
	s := openStore(t, "", dir)
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, DBFileName): 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	// WAL, synchronous=FULL and (the writer's) temp_store=MEMORY are in
	// effect.
	ss := s.(*sqliteStore)
	var mode string
	var sync, temp int
	if err := ss.w.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if err := ss.w.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync); err != nil {
		t.Fatal(err)
	}
	if err := ss.w.QueryRowContext(ctx, `PRAGMA temp_store`).Scan(&temp); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" || sync != 2 || temp != 2 {
		t.Errorf("journal_mode %q synchronous %d temp_store %d, want wal, 2 (FULL) and 2 (MEMORY)", mode, sync, temp)
	}
}

func TestMigrateTwice(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		if err := e.s.Migrate(ctx); err != nil {
			t.Fatalf("second migrate: %v", err)
		}
		ms, err := loadMigrations(e.name)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		switch s := e.s.(type) {
		case *sqliteStore:
			err = s.r.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n)
		case *pgStore:
			err = s.pool.QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n)
		}
		if err != nil {
			t.Fatal(err)
		}
		if n != len(ms) {
			t.Errorf("schema_migrations has %d rows, want %d", n, len(ms))
		}
	})
}

func TestPostgresConcurrentMigrate(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		s, err := Open(ctx, url, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Migrate(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d migrate: %v", i, err)
		}
	}
}

func TestKeys(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		s := e.s
		k := &Key{
			Label:      "app",
			Grants:     []string{"smtp/inject", "metrics/view"},
			ShortKey:   "abcd",
			Hash:       hashOf("abcd0001"),
			Subaccount: 3,
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::1/128")},
		}
		if err := s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if len(k.ID) != 16 || k.CreatedAt.IsZero() || !k.UpdatedAt.Equal(k.CreatedAt) {
			t.Fatalf("created key %+v: want id and times filled", k)
		}
		got, err := s.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, k) {
			t.Errorf("GetKey = %+v\nwant %+v", got, k)
		}
		got, err = s.KeyByHash(ctx, k.Hash)
		if err != nil || got.ID != k.ID {
			t.Fatalf("KeyByHash = %+v, %v", got, err)
		}

		// Duplicate hash and duplicate id.
		dup := &Key{Hash: hashOf("abcd0001"), Grants: []string{"smtp/inject"}}
		if err := s.CreateKey(ctx, dup); !errors.Is(err, ErrExists) {
			t.Errorf("duplicate hash: %v, want ErrExists", err)
		}
		dup = &Key{ID: k.ID, Hash: hashOf("other")}
		if err := s.CreateKey(ctx, dup); !errors.Is(err, ErrExists) {
			t.Errorf("duplicate id: %v, want ErrExists", err)
		}

		k2 := &Key{Label: "second", Hash: hashOf("efgh0002"), ShortKey: "efgh"}
		if err := s.CreateKey(ctx, k2); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetKey(ctx, k2.ID); err != nil || got.Grants != nil || got.AllowedIPs != nil {
			t.Errorf("key without grants/ips = %+v, %v", got, err)
		}

		// Update.
		k.Label = "renamed"
		k.Grants = []string{"smtp/inject"}
		k.Subaccount = 0
		k.AllowedIPs = nil
		if err := s.UpdateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		got, err = s.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Label != "renamed" || !reflect.DeepEqual(got.Grants, []string{"smtp/inject"}) ||
			got.Subaccount != 0 || got.AllowedIPs != nil || got.UpdatedAt.Before(got.CreatedAt) {
			t.Errorf("after update: %+v", got)
		}
		if err := s.UpdateKey(ctx, &Key{ID: "nope"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("update missing: %v", err)
		}

		// Touch never goes back.
		t1 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
		ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::2")
		if err := s.TouchKey(ctx, k.ID, t1, ip1); err != nil {
			t.Fatal(err)
		}
		if err := s.TouchKey(ctx, k.ID, t1.Add(-time.Hour), ip2); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.GetKey(ctx, k.ID); !got.LastUsedAt.Equal(t1) || got.LastUsedIP != ip1 {
			t.Errorf("LastUsedAt, LastUsedIP = %v, %v, want %v, %v", got.LastUsedAt, got.LastUsedIP, t1, ip1)
		}
		if err := s.TouchKey(ctx, k.ID, t1.Add(time.Minute), ip2); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.GetKey(ctx, k.ID); !got.LastUsedAt.Equal(t1.Add(time.Minute)) || got.LastUsedIP != ip2 {
			t.Errorf("after a later use: LastUsedAt, LastUsedIP = %v, %v, want %v, %v", got.LastUsedAt, got.LastUsedIP, t1.Add(time.Minute), ip2)
		}
		if err := s.TouchKey(ctx, "nope", t1, ip1); !errors.Is(err, ErrNotFound) {
			t.Errorf("touch missing: %v", err)
		}

		// List: active only, oldest first.
		ks, next, err := s.ListKeys(ctx, KeyFilter{})
		if err != nil || next != "" {
			t.Fatal(err)
		}
		if len(ks) != 2 || ks[0].ID != k.ID || ks[1].ID != k2.ID {
			t.Errorf("ListKeys = %v", ks)
		}

		// Revoke: hidden from the list, still found by hash, once only.
		if err := s.RevokeKey(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeKey(ctx, k.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("second revoke: %v, want ErrNotFound", err)
		}
		if err := s.RevokeKey(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("revoke missing: %v", err)
		}
		got, err = s.KeyByHash(ctx, k.Hash)
		if err != nil || got.RevokedAt.IsZero() {
			t.Errorf("revoked key by hash = %+v, %v; want it with RevokedAt", got, err)
		}
		ks, _, err = s.ListKeys(ctx, KeyFilter{})
		if err != nil || len(ks) != 1 || ks[0].ID != k2.ID {
			t.Errorf("ListKeys after revoke = %v, %v", ks, err)
		}
		if err := s.UpdateKey(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Errorf("update revoked: %v, want ErrNotFound", err)
		}

		if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetKey missing: %v", err)
		}
		if _, err := s.KeyByHash(ctx, hashOf("nope")); !errors.Is(err, ErrNotFound) {
			t.Errorf("KeyByHash missing: %v", err)
		}
	})
}

func TestEnqueue(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		s := e.s
		m := newMsg(3)
		mustEnqueue(t, s, m)
		for _, r := range m.Recipients {
			if r.ID == 0 || r.State != StateQueued || r.MessageID != m.ID || !r.NextAttempt.Equal(m.CreatedAt) {
				t.Errorf("recipient after enqueue: %+v", r)
			}
		}
		got, err := s.GetMessage(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Body, m.Body) || got.MailFrom != m.MailFrom || got.KeyID != "k1" ||
			got.Subaccount != 7 || got.BodyType != "8BITMIME" || got.DSNRet != "HDRS" ||
			got.DSNEnvID != "env-1" || got.CampaignID != "spring" || !got.CreatedAt.Equal(m.CreatedAt) ||
			string(got.MsysAPI) != string(m.MsysAPI) {
			t.Errorf("GetMessage = %+v\nwant %+v", got, m)
		}
		if len(got.Recipients) != 3 {
			t.Fatalf("got %d recipients", len(got.Recipients))
		}
		for i, r := range got.Recipients {
			if !reflect.DeepEqual(r, m.Recipients[i]) {
				t.Errorf("recipient %d = %+v\nwant %+v", i, r, m.Recipients[i])
			}
		}
		body, err := s.MessageBody(ctx, m.ID)
		if err != nil || !bytes.Equal(body, m.Body) {
			t.Errorf("MessageBody = %q, %v", body, err)
		}
		if _, err := s.MessageBody(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("MessageBody missing: %v", err)
		}

		evs, err := s.ListEvents(ctx, EventFilter{MessageID: m.ID})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 3 {
			t.Fatalf("%d events, want 3 injections", len(evs))
		}
		rcpts := map[string]bool{}
		for _, ev := range evs {
			rcpts[ev.Recipient] = true
			if ev.Type != EventInjection || ev.KeyID != "k1" || ev.Subaccount != 7 || ev.CampaignID != "spring" ||
				!reflect.DeepEqual(ev.Tags, []string{"a", "b"}) || !ev.Time.Equal(m.CreatedAt) || ev.ID == 0 {
				t.Errorf("event %+v", ev)
			}
			var meta map[string]any
			if err := json.Unmarshal(ev.Metadata, &meta); err != nil || meta["user"] != "u1" || meta["n"] != 2.0 {
				t.Errorf("event metadata %s: %v", ev.Metadata, err)
			}
		}
		for _, r := range m.Recipients {
			if !rcpts[r.Address] {
				t.Errorf("no injection event for %s", r.Address)
			}
		}

		// A message without X-MSYS-API and a null sender.
		m2 := newMsg(1)
		m2.MsysAPI, m2.CampaignID, m2.MailFrom, m2.KeyID = nil, "", "", ""
		mustEnqueue(t, s, m2)
		got, err = s.GetMessage(ctx, m2.ID)
		if err != nil || got.MsysAPI != nil || got.MailFrom != "" {
			t.Errorf("GetMessage(no msys) = %+v, %v", got, err)
		}
		evs, err = s.ListEvents(ctx, EventFilter{MessageID: m2.ID})
		if err != nil || len(evs) != 1 || evs[0].Metadata != nil || evs[0].Tags != nil {
			t.Errorf("events(no msys) = %+v, %v", evs, err)
		}

		// Invalid messages are refused before anything is written.
		if err := s.Enqueue(ctx, &Message{ID: NewID()}); err == nil {
			t.Error("enqueue without recipients succeeded")
		}
		if err := s.Enqueue(ctx, &Message{Recipients: []*Recipient{{Address: "a@b"}}}); err == nil {
			t.Error("enqueue without id succeeded")
		}

		// A cancelled context: not stored.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		m3 := newMsg(1)
		if err := s.Enqueue(cctx, m3); !errors.Is(err, context.Canceled) {
			t.Errorf("enqueue with cancelled ctx: %v", err)
		}
		if _, err := s.GetMessage(ctx, m3.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("cancelled message stored: %v", err)
		}
	})
}

func TestEnqueueConcurrent(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		const n = 50
		msgs := make([]*Message, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range msgs {
			msgs[i] = newMsg(2)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = e.s.Enqueue(ctx, msgs[i])
			}()
		}
		wg.Wait()
		ids := map[int64]bool{}
		for i, m := range msgs {
			if errs[i] != nil {
				t.Fatalf("enqueue %d: %v", i, errs[i])
			}
			for _, r := range m.Recipients {
				if r.ID == 0 || ids[r.ID] {
					t.Fatalf("recipient id %d zero or repeated", r.ID)
				}
				ids[r.ID] = true
			}
		}
		all, err := e.s.ListMessages(ctx, QueueFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != n {
			t.Fatalf("ListMessages has %d, want %d", len(all), n)
		}
		for _, m := range all {
			for _, r := range m.Recipients {
				if !ids[r.ID] {
					t.Errorf("stored recipient %d not returned by any Enqueue", r.ID)
				}
			}
		}
		st, err := e.s.Stats(ctx)
		if err != nil || st.ByState[StateQueued] != 2*n {
			t.Errorf("Stats = %+v, %v", st, err)
		}
		evs, err := e.s.ListEvents(ctx, EventFilter{Types: []string{EventInjection}})
		if err != nil || len(evs) != 2*n {
			t.Errorf("%d injection events, %v; want %d", len(evs), err, 2*n)
		}
	})
}

func TestEnqueueDuplicateID(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		first := newMsg(1)
		mustEnqueue(t, e.s, first)

		// A message reusing first's id, enqueued together with good ones
		// (likely in one batch): it fails alone, nothing of it is stored,
		// the others land.
		dup := newMsg(2)
		dup.ID = first.ID
		good := make([]*Message, 10)
		errs := make([]error, len(good))
		var dupErr error
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			dupErr = e.s.Enqueue(ctx, dup)
		}()
		for i := range good {
			good[i] = newMsg(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = e.s.Enqueue(ctx, good[i])
			}()
		}
		wg.Wait()
		if !errors.Is(dupErr, ErrExists) {
			t.Errorf("duplicate id: %v, want ErrExists", dupErr)
		}
		for _, r := range dup.Recipients {
			if r.ID != 0 {
				t.Errorf("failed message's recipient has id %d", r.ID)
			}
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("good message %d: %v", i, err)
			}
			if _, err := e.s.GetMessage(ctx, good[i].ID); err != nil {
				t.Errorf("good message %d not stored: %v", i, err)
			}
		}
		got, err := e.s.GetMessage(ctx, first.ID)
		if err != nil || len(got.Recipients) != 1 || got.Recipients[0].Address != first.Recipients[0].Address {
			t.Errorf("first message changed: %+v, %v", got, err)
		}
		evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: first.ID})
		if err != nil || len(evs) != 1 {
			t.Errorf("events of first: %d, %v; want 1", len(evs), err)
		}

		// Two messages with the same new id at once: exactly one lands.
		a, b := newMsg(1), newMsg(1)
		b.ID = a.ID
		var ea, eb error
		wg.Add(2)
		go func() { defer wg.Done(); ea = e.s.Enqueue(ctx, a) }()
		go func() { defer wg.Done(); eb = e.s.Enqueue(ctx, b) }()
		wg.Wait()
		if (ea == nil) == (eb == nil) {
			t.Errorf("same id twice: %v, %v; want exactly one success", ea, eb)
		}
		if ea != nil && !errors.Is(ea, ErrExists) || eb != nil && !errors.Is(eb, ErrExists) {
			t.Errorf("same id twice: %v, %v; want ErrExists", ea, eb)
		}
		got, err = e.s.GetMessage(ctx, a.ID)
		if err != nil || len(got.Recipients) != 1 {
			t.Errorf("same id twice stored %+v, %v", got, err)
		}
	})
}

func TestClaimLease(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m1, m2 := newMsg(3), newMsg(2)
		mustEnqueue(t, e.s, m1)
		mustEnqueue(t, e.s, m2)

		const lease = 500 * time.Millisecond
		a, err := e.s.ClaimDue(ctx, "A", ClaimOptions{Limit: 100, Lease: lease})
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != 5 {
			t.Fatalf("A claimed %d, want 5", len(a))
		}
		// Same message and domain adjacent.
		seen := map[string]bool{}
		last := ""
		for _, c := range a {
			g := c.MessageID + "/" + c.Domain
			if g != last && seen[g] {
				t.Errorf("group %s not adjacent in %v", g, a)
			}
			seen[g], last = true, g
			if c.MailFrom != m1.MailFrom || c.KeyID != "k1" || c.Subaccount != 7 || c.CampaignID != "spring" ||
				c.BodyType != "8BITMIME" || c.DSNRet != "HDRS" || c.DSNEnvID != "env-1" || c.CreatedAt.IsZero() ||
				c.Address == "" || c.State != StateQueued {
				t.Errorf("claimed %+v", c)
			}
		}
		b, err := e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 100, Lease: lease})
		if err != nil || len(b) != 0 {
			t.Fatalf("B claimed %d (%v) while A holds the lease", len(b), err)
		}
		// After the lease ends, B gets them.
		time.Sleep(lease + 100*time.Millisecond)
		b, err = e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 2, Lease: time.Minute})
		if err != nil || len(b) != 2 {
			t.Fatalf("B claimed %d (%v) after the lease, want 2 (limit)", len(b), err)
		}
		b2, err := e.s.ClaimDue(ctx, "B", ClaimOptions{Limit: 100, Lease: time.Minute})
		if err != nil || len(b2) != 3 {
			t.Fatalf("B claimed %d (%v), want the other 3", len(b2), err)
		}
		if _, err := e.s.ClaimDue(ctx, "", ClaimOptions{Limit: 1, Lease: time.Minute}); err == nil {
			t.Error("claim without owner succeeded")
		}

		// A's late outcomes are ignored.
		n, err := e.s.Finish(ctx, "A", Finish{Outcomes: []Outcome{{RecipientID: a[0].ID, State: StateDelivered, Reply: "250 ok"}}})
		if err != nil || n != 0 {
			t.Errorf("stale Finish applied %d, %v", n, err)
		}
	})
}

func TestFinish(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m := newMsg(4)
		mustEnqueue(t, e.s, m)
		cs, err := e.s.ClaimDue(ctx, "w1", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(cs) != 4 {
			t.Fatalf("claimed %d, %v", len(cs), err)
		}
		byAddr := map[string]*Claimed{}
		for _, c := range cs {
			byAddr[c.Address] = c
		}
		r0, r1, r2, r3 := byAddr["rcpt0@example.com"], byAddr["rcpt1@example.org"], byAddr["rcpt2@example.com"], byAddr["rcpt3@example.org"]
		next := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)

		// Stolen: r3's lease goes to another owner (expired and reclaimed).
		steal(t, e, r3.ID)

		dsn := newMsg(1)
		dsn.KeyID, dsn.MailFrom, dsn.MsysAPI = "", "", nil
		evTime := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
		f := Finish{
			Outcomes: []Outcome{
				{RecipientID: r0.ID, State: StateDelivered, Reply: "250 2.0.0 ok"},
				{RecipientID: r1.ID, State: StateDeferred, NextAttempt: next, Reply: "451 4.3.0 later"},
				{RecipientID: r2.ID, State: StateBounced, Reply: "550 5.1.1 no such user"},
				{RecipientID: r3.ID, State: StateBounced, Reply: "550 stale"},
			},
			Events: []Event{
				{Type: EventDelivery, Time: evTime, MessageID: m.ID, Recipient: r0.Address, Reply: "250 2.0.0 ok"},
				{Type: EventDelay, MessageID: m.ID, Recipient: r1.Address, Reply: "451 4.3.0 later", Tags: []string{"x"}},
				{Type: EventBounce, MessageID: m.ID, Recipient: r2.Address, Reply: "550 5.1.1 no such user", Metadata: json.RawMessage(`{"k":"v"}`)},
				{Type: EventBounce, MessageID: m.ID, Recipient: r3.Address, Reply: "550 stale"},
			},
			Enqueue: []*Message{dsn},
		}
		n, err := e.s.Finish(ctx, "w1", f)
		if err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Errorf("applied %d, want 3", n)
		}
		got, err := e.s.GetMessage(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]struct {
			state    string
			attempts int
			reply    string
		}{
			r0.Address: {StateDelivered, 1, "250 2.0.0 ok"},
			r1.Address: {StateDeferred, 1, "451 4.3.0 later"},
			r2.Address: {StateBounced, 1, "550 5.1.1 no such user"},
			r3.Address: {StateQueued, 0, ""},
		}
		for _, r := range got.Recipients {
			w := want[r.Address]
			if r.State != w.state || r.Attempts != w.attempts || r.LastReply != w.reply {
				t.Errorf("%s: state %s attempts %d reply %q; want %+v", r.Address, r.State, r.Attempts, r.LastReply, w)
			}
			if r.Address == r1.Address && !r.NextAttempt.Equal(next) {
				t.Errorf("deferred NextAttempt %v, want %v", r.NextAttempt, next)
			}
		}
		evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: m.ID, Types: []string{EventDelivery, EventDelay, EventBounce}})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 3 {
			t.Fatalf("%d outcome events, want 3 (not the stale one): %+v", len(evs), evs)
		}
		for _, ev := range evs {
			switch ev.Type {
			case EventDelivery:
				if !ev.Time.Equal(evTime) {
					t.Errorf("delivery event time %v", ev.Time)
				}
			case EventDelay:
				if !reflect.DeepEqual(ev.Tags, []string{"x"}) || ev.Time.IsZero() {
					t.Errorf("delay event %+v", ev)
				}
			case EventBounce:
				if ev.Recipient != r2.Address || !jsonEqual(ev.Metadata, `{"k":"v"}`) {
					t.Errorf("bounce event %+v", ev)
				}
			}
		}
		if _, err := e.s.GetMessage(ctx, dsn.ID); err != nil {
			t.Errorf("DSN not enqueued: %v", err)
		}

		// The deferred one is not due, the others are final and r3 belongs
		// to the thief: nothing of m is claimable (the DSN is).
		cs, err = e.s.ClaimDue(ctx, "w1", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.MessageID == m.ID {
				t.Errorf("claimed %s (%s) again", c.Address, c.State)
			}
		}

		// All outcomes stale: no events, no new messages.
		dsn2 := newMsg(1)
		n, err = e.s.Finish(ctx, "w1", Finish{
			Outcomes: []Outcome{{RecipientID: r3.ID, State: StateBounced}},
			Events:   []Event{{Type: EventBounce, MessageID: m.ID, Recipient: r3.Address}},
			Enqueue:  []*Message{dsn2},
		})
		if err != nil || n != 0 {
			t.Errorf("stale finish: %d, %v", n, err)
		}
		if _, err := e.s.GetMessage(ctx, dsn2.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("stale finish enqueued its DSN: %v", err)
		}
		if _, err := e.s.Finish(ctx, "w1", Finish{Outcomes: []Outcome{{RecipientID: r0.ID, State: "weird"}}}); err == nil {
			t.Error("finish with a bad state succeeded")
		}

		// Finish is atomic: a failing new message (duplicate id) rolls back
		// the outcomes and events too.
		mustEnqueue(t, e.s, newMsg(1))
		cs, err = e.s.ClaimDue(ctx, "w2", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(cs) != 1 {
			t.Fatalf("claim fresh message: %d, %v", len(cs), err)
		}
		bad := newMsg(1)
		bad.ID = m.ID
		_, err = e.s.Finish(ctx, "w2", Finish{
			Outcomes: []Outcome{{RecipientID: cs[0].ID, State: StateDelivered}},
			Events:   []Event{{Type: EventDelivery, MessageID: "atomic-check"}},
			Enqueue:  []*Message{bad},
		})
		if !errors.Is(err, ErrExists) {
			t.Errorf("finish with duplicate message: %v, want ErrExists", err)
		}
		got, err = e.s.GetMessage(ctx, cs[0].MessageID)
		if err != nil || got.Recipients[0].State != StateQueued || got.Recipients[0].Attempts != 0 {
			t.Errorf("failed finish changed the recipient: %+v, %v", got.Recipients[0], err)
		}
		if evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: "atomic-check"}); err != nil || len(evs) != 0 {
			t.Errorf("failed finish wrote events: %v, %v", evs, err)
		}
	})
}

// steal gives recipient id to another owner, as if its lease had expired
// and another worker claimed it.
func steal(t *testing.T, e *env, id int64) {
	t.Helper()
	ctx := ctxT(t)
	var err error
	switch s := e.s.(type) {
	case *sqliteStore:
		_, err = s.w.ExecContext(ctx, `UPDATE recipients SET lease_owner = 'thief' WHERE id = ?`, id)
	case *pgStore:
		_, err = s.pool.Exec(ctx, `UPDATE recipients SET lease_owner = 'thief' WHERE id = $1`, id)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func jsonEqual(a json.RawMessage, b string) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal([]byte(b), &y) == nil && reflect.DeepEqual(x, y)
}

func TestDeferredNotDue(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m := newMsg(2)
		later := time.Now().Add(time.Hour)
		m.Recipients[0].State = StateDeferred
		m.Recipients[0].NextAttempt = later
		m.Recipients[1].NextAttempt = later
		mustEnqueue(t, e.s, m)
		cs, err := e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(cs) != 0 {
			t.Fatalf("claimed %d not-due recipients (%v)", len(cs), err)
		}
		n, err := e.s.RetryMessage(ctx, m.ID)
		if err != nil || n != 2 {
			t.Fatalf("RetryMessage = %d, %v; want 2", n, err)
		}
		cs, err = e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(cs) != 2 {
			t.Fatalf("after retry claimed %d, %v; want 2", len(cs), err)
		}
		if _, err := e.s.RetryMessage(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("retry missing: %v", err)
		}
	})
}

func TestQueueAdmin(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		base := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
		var msgs []*Message
		for i := 0; i < 4; i++ {
			m := newMsg(1)
			m.CreatedAt = base.Add(time.Duration(i) * time.Minute)
			m.KeyID = fmt.Sprintf("key%d", i%2)
			m.Subaccount = int64(i % 2)
			m.Recipients[0].Domain = fmt.Sprintf("d%d.example", i)
			msgs = append(msgs, m)
			mustEnqueue(t, e.s, m)
		}
		// msgs[0] delivered.
		cs, err := e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 1, Lease: time.Minute})
		if err != nil || len(cs) != 1 || cs[0].MessageID != msgs[0].ID {
			t.Fatalf("claim oldest: %+v, %v", cs, err)
		}
		if _, err := e.s.Finish(ctx, "w", Finish{Outcomes: []Outcome{{RecipientID: cs[0].ID, State: StateDelivered}}}); err != nil {
			t.Fatal(err)
		}

		ids := func(ms []*Message) []string {
			var out []string
			for _, m := range ms {
				out = append(out, m.ID)
				if m.Body != nil || len(m.Recipients) != 1 {
					t.Errorf("listed message %s: body %q, %d recipients", m.ID, m.Body, len(m.Recipients))
				}
			}
			return out
		}
		one := int64(1)
		for _, c := range []struct {
			f    QueueFilter
			want []int
		}{
			{QueueFilter{}, []int{3, 2, 1, 0}},
			{QueueFilter{State: StateQueued}, []int{3, 2, 1}},
			{QueueFilter{State: StateDelivered}, []int{0}},
			{QueueFilter{Domain: "D2.example"}, []int{2}},
			{QueueFilter{KeyID: "key1"}, []int{3, 1}},
			{QueueFilter{Subaccount: &one, State: StateQueued}, []int{3, 1}},
			{QueueFilter{Limit: 2}, []int{3, 2}},
			{QueueFilter{State: StateQueued, OldestFirst: true, Limit: 2}, []int{1, 2}},
		} {
			got, err := e.s.ListMessages(ctx, c.f)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, i := range c.want {
				want = append(want, msgs[i].ID)
			}
			if g := ids(got); !reflect.DeepEqual(g, want) {
				t.Errorf("ListMessages(%+v) = %v, want %v", c.f, g, want)
			}
		}

		st, err := e.s.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.ByState[StateQueued] != 3 || st.ByState[StateDelivered] != 1 || !st.OldestQueued.Equal(msgs[1].CreatedAt) {
			t.Errorf("Stats = %+v, want 3 queued, 1 delivered, oldest %v", st, msgs[1].CreatedAt)
		}

		if err := e.s.DeleteMessage(ctx, msgs[1].ID); err != nil {
			t.Fatal(err)
		}
		if err := e.s.DeleteMessage(ctx, msgs[1].ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("second delete: %v", err)
		}
		if _, err := e.s.GetMessage(ctx, msgs[1].ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted message: %v", err)
		}
		if evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: msgs[1].ID}); err != nil || len(evs) != 1 {
			t.Errorf("events of a deleted message: %d, %v; want them kept", len(evs), err)
		}
		st, err = e.s.Stats(ctx)
		if err != nil || st.ByState[StateQueued] != 2 || !st.OldestQueued.Equal(msgs[2].CreatedAt) {
			t.Errorf("Stats after delete = %+v, %v", st, err)
		}
	})
}

func TestEvents(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		sub := int64(5)
		evs := []Event{
			{Type: EventDelivery, Time: t0, MessageID: "m1", KeyID: "ka", Recipient: "a@x"},
			{Type: EventBounce, Time: t0.Add(time.Minute), MessageID: "m1", KeyID: "ka", Subaccount: 5, Recipient: "b@x", Reply: "550 no"},
			{Type: EventDelay, Time: t0.Add(2 * time.Minute), MessageID: "m2", KeyID: "kb", Subaccount: 5},
			{Type: EventPolicyRejection, Time: t0.Add(3 * time.Minute), KeyID: "kb", Metadata: json.RawMessage(`{"a":[1,2]}`), Tags: []string{}},
		}
		if err := e.s.AddEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if ev.ID == 0 {
				t.Errorf("event without id: %+v", ev)
			}
		}
		types := func(es []Event) []string {
			var out []string
			for _, e := range es {
				out = append(out, e.Type)
			}
			return out
		}
		for _, c := range []struct {
			f    EventFilter
			want []string
		}{
			{EventFilter{}, []string{EventPolicyRejection, EventDelay, EventBounce, EventDelivery}},
			{EventFilter{MessageID: "m1"}, []string{EventBounce, EventDelivery}},
			{EventFilter{KeyID: "kb"}, []string{EventPolicyRejection, EventDelay}},
			{EventFilter{Subaccount: &sub}, []string{EventDelay, EventBounce}},
			{EventFilter{Types: []string{EventDelivery, EventDelay}}, []string{EventDelay, EventDelivery}},
			{EventFilter{Since: t0.Add(90 * time.Second)}, []string{EventPolicyRejection, EventDelay}},
			{EventFilter{Limit: 1}, []string{EventPolicyRejection}},
		} {
			got, err := e.s.ListEvents(ctx, c.f)
			if err != nil {
				t.Fatal(err)
			}
			if g := types(got); !reflect.DeepEqual(g, c.want) {
				t.Errorf("ListEvents(%+v) = %v, want %v", c.f, g, c.want)
			}
		}
		got, err := e.s.ListEvents(ctx, EventFilter{MessageID: "m1", Types: []string{EventBounce}})
		if err != nil || len(got) != 1 {
			t.Fatal(got, err)
		}
		if g := got[0]; g.Reply != "550 no" || g.Recipient != "b@x" || !g.Time.Equal(t0.Add(time.Minute)) || g.Subaccount != 5 || g.ID != evs[1].ID {
			t.Errorf("bounce event = %+v", g)
		}
		got, err = e.s.ListEvents(ctx, EventFilter{Types: []string{EventPolicyRejection}})
		if err != nil || len(got) != 1 || !jsonEqual(got[0].Metadata, `{"a":[1,2]}`) || got[0].Tags == nil || len(got[0].Tags) != 0 {
			t.Errorf("policy event = %+v, %v", got, err)
		}

		n, err := e.s.PruneEvents(ctx, t0.Add(2*time.Minute))
		if err != nil || n != 2 {
			t.Errorf("PruneEvents = %d, %v; want 2", n, err)
		}
		got, err = e.s.ListEvents(ctx, EventFilter{})
		if err != nil || !reflect.DeepEqual(types(got), []string{EventPolicyRejection, EventDelay}) {
			t.Errorf("after prune: %v, %v", types(got), err)
		}
	})
}

func TestDomains(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		d := &Domain{Name: "Example.COM", Subaccount: 2, Shared: true, Selector: "s1", Algorithm: "ed25519",
			PrivateKey: []byte("-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"), PublicKey: "AAAA"}
		if err := e.s.CreateDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
		if d.Name != "example.com" || d.CreatedAt.IsZero() {
			t.Errorf("created %+v", d)
		}
		if err := e.s.CreateDomain(ctx, &Domain{Name: "example.com"}); !errors.Is(err, ErrExists) {
			t.Errorf("duplicate domain: %v", err)
		}
		if err := e.s.CreateDomain(ctx, &Domain{Name: "a.example", Algorithm: "rsa", PrivateKey: []byte("k")}); err != nil {
			t.Fatal(err)
		}
		got, err := e.s.GetDomain(ctx, "EXAMPLE.com")
		if err != nil || !reflect.DeepEqual(got, d) {
			t.Errorf("GetDomain = %+v, %v\nwant %+v", got, err, d)
		}
		ds, err := e.s.ListDomains(ctx)
		if err != nil || len(ds) != 2 || ds[0].Name != "a.example" || ds[1].Name != "example.com" {
			t.Errorf("ListDomains = %v, %v", ds, err)
		}
		if err := e.s.DeleteDomain(ctx, "example.com"); err != nil {
			t.Fatal(err)
		}
		if err := e.s.DeleteDomain(ctx, "example.com"); !errors.Is(err, ErrNotFound) {
			t.Errorf("second delete: %v", err)
		}
		if _, err := e.s.GetDomain(ctx, "example.com"); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted domain: %v", err)
		}
	})
}

// waitWake waits for a wakeup or fails after a generous deadline.
func waitWake(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no wakeup after %s", what)
	}
}

// drain empties a wakeup channel.
func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func TestWakeups(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ch := e.s.Wakeups()
		if ch != e.s.Wakeups() {
			t.Error("Wakeups returns different channels")
		}
		if cap(ch) != 1 {
			t.Errorf("Wakeups capacity %d, want 1", cap(ch))
		}
		// The PostgreSQL listener wakes once when it connects: let it.
		time.Sleep(200 * time.Millisecond)
		drain(ch)
		mustEnqueue(t, e.s, newMsg(1))
		waitWake(t, ch, "Enqueue")
	})
}

func TestClose(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		if err := e.s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.s.Close(); err != nil {
			t.Errorf("second close: %v", err)
		}
		err := e.s.Enqueue(context.Background(), newMsg(1))
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("enqueue after close: %v, want ErrUnavailable", err)
		}
		_, err = e.s.Finish(context.Background(), "w1", Finish{Outcomes: []Outcome{{RecipientID: 1, State: StateDelivered}}})
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("finish after close: %v, want ErrUnavailable", err)
		}
		if _, err := e.s.GetKey(context.Background(), "x"); !errors.Is(err, ErrUnavailable) {
			t.Errorf("GetKey after close: %v, want ErrUnavailable", err)
		}
	})
}

// TestRawKeyNotStored checks the key itself appears nowhere in the
// database: not in the SQLite file and its WAL, not in any PostgreSQL
// table's text.
func TestRawKeyNotStored(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		raw := "3f8a9c2e7b1d4f6a8c0e2b4d6f8a1c3e5b7d9f0a"
		k := &Key{Label: "secret test", Grants: []string{"smtp/inject"}, ShortKey: raw[:4], Hash: hashOf(raw)}
		if err := e.s.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		if err := e.s.TouchKey(ctx, k.ID, time.Now(), netip.MustParseAddr("192.0.2.9")); err != nil {
			t.Fatal(err)
		}
		needles := [][]byte{[]byte(raw), []byte(raw[4:]), []byte(strings.ToUpper(raw))}
		switch e.name {
		case "sqlite":
			found := 0
			for _, name := range []string{DBFileName, DBFileName + "-wal", DBFileName + "-shm"} {
				b, err := os.ReadFile(filepath.Join(e.dir, name))
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				found++
				for _, n := range needles {
					if bytes.Contains(b, n) {
						t.Errorf("%s contains the raw key", name)
					}
				}
				// Sanity: the hash and label are there, so we searched the
				// right bytes.
				if name != DBFileName+"-shm" && bytes.Contains(b, []byte("secret test")) && !bytes.Contains(b, k.Hash) {
					t.Errorf("%s has the label but not the hash", name)
				}
			}
			if found == 0 {
				t.Fatal("no database files found")
			}
		case "postgres":
			conn, err := pgx.Connect(ctx, e.url)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = conn.Close(ctx) }()
			rows, err := conn.Query(ctx, `SELECT table_name FROM information_schema.tables
				WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`)
			if err != nil {
				t.Fatal(err)
			}
			tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil || len(tables) < 5 {
				t.Fatalf("tables %v, %v", tables, err)
			}
			sawLabel := false
			for _, tb := range tables {
				rows, err := conn.Query(ctx, `SELECT t::text FROM `+pgx.Identifier{tb}.Sanitize()+` t`)
				if err != nil {
					t.Fatal(err)
				}
				texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range texts {
					sawLabel = sawLabel || strings.Contains(s, "secret test")
					for _, n := range needles {
						if strings.Contains(s, string(n)) {
							t.Errorf("table %s contains the raw key: %s", tb, s)
						}
					}
				}
			}
			if !sawLabel {
				t.Error("label not found in any table: searched the wrong schema?")
			}
		}
	})
}

func TestPostgresUnavailable(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s, err := Open(ctx, "postgres://postgres@127.0.0.1:1/test?connect_timeout=2", "")
	if err != nil {
		t.Fatalf("Open on a closed port: %v (connections are lazy: want success)", err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	checks := map[string]error{
		"ping":    s.Ping(ctx),
		"migrate": s.Migrate(ctx),
		"enqueue": s.Enqueue(ctx, newMsg(1)),
		"finish":  second(s.Finish(ctx, "w", Finish{Events: []Event{{Type: EventDelay}}})),
		"events":  s.AddEvents(ctx, []Event{{Type: EventDelay}}),
	}
	_, checks["key by hash"] = s.KeyByHash(ctx, hashOf("x"))
	_, checks["claim"] = s.ClaimDue(ctx, "w", ClaimOptions{Limit: 1, Lease: time.Minute})
	_, checks["list"] = s.ListMessages(ctx, QueueFilter{})
	_, checks["stats"] = s.Stats(ctx)
	for op, err := range checks {
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: %v, want ErrUnavailable", op, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

// TestPostgresTwoNodes runs two stores on one schema, as two gateway nodes.
func TestPostgresTwoNodes(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	a := openStore(t, url, "")
	b := openStore(t, url, "")
	ctx := ctxT(t)

	// Enqueue on A wakes B. B's listener wakes once when it connects; wait
	// until it is listening (a wakeup arrived), then expect the next.
	// A node on another schema of the same database is not woken.
	c := openStore(t, pgtest.URL(t), "")
	waitWake(t, b.Wakeups(), "listener connected")
	waitWake(t, c.Wakeups(), "listener connected")
	drain(b.Wakeups())
	drain(c.Wakeups())
	mustEnqueue(t, a, newMsg(1))
	waitWake(t, b.Wakeups(), "Enqueue on the other node")
	select {
	case <-c.Wakeups():
		t.Error("a node on another schema was woken")
	case <-time.After(300 * time.Millisecond):
	}

	// Concurrent claims from both nodes never return the same recipient.
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n/20; j++ {
				if err := a.Enqueue(ctx, newMsg(1)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var mu sync.Mutex
	claimed := map[int64]string{}
	for w := 0; w < 8; w++ {
		s, owner := a, fmt.Sprintf("a%d", w)
		if w%2 == 1 {
			s, owner = b, fmt.Sprintf("b%d", w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cs, err := s.ClaimDue(ctx, owner, ClaimOptions{Limit: 7, Lease: time.Minute})
				if err != nil {
					t.Error(err)
					return
				}
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					if prev, dup := claimed[c.ID]; dup {
						t.Errorf("recipient %d claimed by %s and %s", c.ID, prev, owner)
					}
					claimed[c.ID] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(claimed) != n+1 {
		t.Errorf("claimed %d recipients, want %d", len(claimed), n+1)
	}
	owners := map[string]bool{}
	for _, o := range claimed {
		owners[o[:1]] = true
	}
	keys := make([]string, 0, len(owners))
	for o := range owners {
		keys = append(keys, o)
	}
	sort.Strings(keys)
	t.Logf("claiming nodes: %v", keys)
}

// TestPostgresListenerReconnects kills the listener's connection: the
// store reconnects and other nodes' Enqueue wakes it again.
func TestPostgresListenerReconnects(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	app := "smtpgw_listen_" + NewKeyID()
	a := openStore(t, url, "")
	b := openStore(t, url+"&application_name="+app, "")
	ctx := ctxT(t)
	waitWake(t, b.Wakeups(), "listener connected")

	conn, err := pgx.Connect(ctx, pgtest.BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var killed int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND query ILIKE 'LISTEN%'`, app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("terminated %d listener connections, want 1", killed)
	}
	// The reconnected listener wakes once on its own, then on NOTIFY.
	waitWake(t, b.Wakeups(), "listener reconnected")
	drain(b.Wakeups())
	mustEnqueue(t, a, newMsg(1))
	waitWake(t, b.Wakeups(), "Enqueue after reconnect")
}
