// Package storetest opens real stores for tests of the packages built on
// store: SQLite in a temporary directory and PostgreSQL in a schema of the
// test's own (internal/pgtest), migrated and closed when the test ends.
package storetest

import (
	"context"
	"testing"

	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/store"
)

// Backends names the store implementations every store-backed test runs on.
var Backends = []string{"sqlite", "postgres"}

// Open returns a fresh, migrated store of the named backend.
func Open(t testing.TB, backend string) store.Store {
	t.Helper()
	switch backend {
	case "sqlite":
		return OpenURL(t, "", t.TempDir())
	case "postgres":
		return OpenURL(t, pgtest.URL(t), "")
	}
	t.Fatalf("storetest: unknown backend %q", backend)
	return nil
}

// OpenURL opens and migrates the store at url (SQLite in dataDir when url
// is ""); it is closed in t.Cleanup, and a failing Close fails the test.
func OpenURL(t testing.TB, url, dataDir string) store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, url, dataDir)
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

// ForEach runs fn as a parallel subtest on a fresh store of each backend.
func ForEach(t *testing.T, fn func(t *testing.T, st store.Store)) {
	t.Helper()
	for _, b := range Backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			fn(t, Open(t, b))
		})
	}
}
