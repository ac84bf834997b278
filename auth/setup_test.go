package auth

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// newTestVerifier returns a Verifier closed at the end of the test,
// without a failed-authentication budget: the tests refuse many keys from
// one address (TestVerifyFailureBudget tests the budget).
func newTestVerifier(t testing.TB, st store.Store, ttl time.Duration) *Verifier {
	t.Helper()
	v := NewVerifier(st, Config{CacheTTL: ttl, MaxFailures: -1})
	t.Cleanup(v.Close)
	return v
}

// mustCreate creates a key through m and returns it with its record.
func mustCreate(t testing.TB, m *Manager, p CreateParams) (string, *store.Key) {
	t.Helper()
	if p.Label == "" {
		p.Label = "test key"
	}
	ensureSubaccount(t, m.st, p.Subaccount)
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

// ensureSubaccount creates subaccount id (active) unless it is 0 or exists:
// a key can belong only to an existing subaccount.
func ensureSubaccount(t testing.TB, st store.Store, id int64) {
	t.Helper()
	if id == 0 {
		return
	}
	err := st.CreateSubaccount(context.Background(), &store.Subaccount{ID: id, Name: "test"})
	if err != nil && !errors.Is(err, store.ErrExists) {
		t.Fatalf("create subaccount %d: %v", id, err)
	}
}
