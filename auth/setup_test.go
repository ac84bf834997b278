package auth

import (
	"context"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/store"
)

// backend opens a migrated store for one test.
type backend struct {
	name string
	open func(t testing.TB) store.Store
}

// backends are the two store implementations every store-backed test runs
// on: SQLite in a temporary directory and a PostgreSQL schema of its own.
var backends = []backend{
	{"sqlite", func(t testing.TB) store.Store { return openStore(t, "", t.TempDir()) }},
	{"postgres", func(t testing.TB) store.Store { return openStore(t, pgtest.URL(t), "") }},
}

func openStore(t testing.TB, url, dir string) store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, url, dir)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate store: %v", err)
	}
	return st
}

// forEachStore runs fn as a parallel subtest on each backend.
func forEachStore(t *testing.T, fn func(t *testing.T, st store.Store)) {
	t.Helper()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			fn(t, b.open(t))
		})
	}
}

// newTestVerifier returns a Verifier closed at the end of the test.
func newTestVerifier(t testing.TB, st store.Store, ttl time.Duration) *Verifier {
	t.Helper()
	v := NewVerifier(st, Config{CacheTTL: ttl})
	t.Cleanup(v.Close)
	return v
}

// mustCreate creates a key through m and returns it with its record.
func mustCreate(t testing.TB, m *Manager, p CreateParams) (string, *store.Key) {
	t.Helper()
	if p.Label == "" {
		p.Label = "test key"
	}
	key, k, err := m.Create(context.Background(), p)
	if err != nil {
		t.Fatalf("create key %+v: %v", p, err)
	}
	return key, k
}

// eventually polls cond every 10 ms until it holds or d passed.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
