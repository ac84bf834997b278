package auth

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, time.Hour)
		m := NewManager(st, v)
		inject, ki := mustCreate(t, m, CreateParams{Label: "app", Grants: []string{GrantSMTPInject, "transmissions/modify"}, Subaccount: 7})
		restricted, kr := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}, AllowedIPs: []string{"192.0.2.0/24", "2001:db8::/32"}})
		metrics, km := mustCreate(t, m, CreateParams{Grants: []string{GrantMetricsView}})
		revoked, kv := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		if err := m.Delete(ctx, kv.ID); err != nil {
			t.Fatal(err)
		}
		unknown, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}

		in := netip.MustParseAddr("192.0.2.10")
		out := netip.MustParseAddr("198.51.100.10")
		cases := []struct {
			name   string
			key    string
			client netip.Addr
			grant  string
			want   error  // nil: success
			keyID  string // expected Identity.KeyID or Error.KeyID
		}{
			{"ok", inject, out, GrantSMTPInject, nil, ki.ID},
			{"ok any grant", inject, out, "", nil, ki.ID},
			{"ok inert grant", inject, out, "transmissions/modify", nil, ki.ID},
			{"restricted in", restricted, in, GrantSMTPInject, nil, kr.ID},
			{"restricted v4-mapped", restricted, netip.MustParseAddr("::ffff:192.0.2.10"), GrantSMTPInject, nil, kr.ID},
			{"restricted v6", restricted, netip.MustParseAddr("2001:db8::25"), GrantSMTPInject, nil, kr.ID},
			{"restricted out", restricted, out, GrantSMTPInject, ErrIPNotAllowed, kr.ID},
			{"restricted no address", restricted, netip.Addr{}, GrantSMTPInject, ErrIPNotAllowed, kr.ID},
			{"missing grant", metrics, out, GrantSMTPInject, ErrMissingGrant, km.ID},
			{"metrics grant", metrics, out, GrantMetricsView, nil, km.ID},
			{"other grant", inject, out, GrantAPIKeysManage, ErrMissingGrant, ki.ID},
			{"revoked", revoked, out, GrantSMTPInject, ErrRevokedKey, kv.ID},
			{"revoked any grant", revoked, out, "", ErrRevokedKey, kv.ID},
			{"unknown", unknown, out, GrantSMTPInject, ErrUnknownKey, ""},
			{"upper case", strings.ToUpper(inject), out, GrantSMTPInject, ErrUnknownKey, ""},
			{"short", inject[:39], out, GrantSMTPInject, ErrUnknownKey, ""},
			{"empty", "", out, GrantSMTPInject, ErrUnknownKey, ""},
			{"spaces", " " + inject, out, GrantSMTPInject, ErrUnknownKey, ""},
		}
		// Twice: the first round looks keys up in the store, the second
		// finds them in the cache; both must decide the same.
		for round := 1; round <= 2; round++ {
			for _, c := range cases {
				id, err := v.VerifyGrant(ctx, c.key, c.client, c.grant)
				if c.want == nil {
					if err != nil {
						t.Errorf("round %d %s: %v", round, c.name, err)
						continue
					}
					if id.KeyID != c.keyID {
						t.Errorf("round %d %s: KeyID %q, want %q", round, c.name, id.KeyID, c.keyID)
					}
					continue
				}
				if !errors.Is(err, c.want) {
					t.Errorf("round %d %s: error %v, want %v", round, c.name, err, c.want)
					continue
				}
				var ae *Error
				if !errors.As(err, &ae) {
					t.Errorf("round %d %s: error %T is not *auth.Error", round, c.name, err)
					continue
				}
				if ae.KeyID != c.keyID || ae.IP != c.client || ae.Grant != c.grant {
					t.Errorf("round %d %s: %+v, want KeyID %q IP %v Grant %q", round, c.name, ae, c.keyID, c.client, c.grant)
				}
				if c.key != "" && strings.Contains(err.Error(), c.key) {
					t.Errorf("round %d %s: error %q contains the key", round, c.name, err)
				}
			}
		}

		// Verify is VerifyGrant(smtp/inject), and the identity is complete.
		id, err := v.Verify(ctx, inject, out)
		if err != nil {
			t.Fatal(err)
		}
		want := Identity{KeyID: ki.ID, ShortKey: inject[:4], Label: "app", Subaccount: 7, Grants: []string{GrantSMTPInject, "transmissions/modify"}}
		if id.KeyID != want.KeyID || id.ShortKey != want.ShortKey || id.Label != want.Label ||
			id.Subaccount != want.Subaccount || !slices.Equal(id.Grants, want.Grants) {
			t.Errorf("identity %+v, want %+v", id, want)
		}
		if !id.Has(GrantSMTPInject) || id.Has(GrantAPIKeysManage) {
			t.Errorf("Has: %+v", id)
		}
		id.Grants[0] = "mutated" // the caller's copy: the cache must not change
		if _, err := v.Verify(ctx, inject, out); err != nil {
			t.Errorf("after mutating an identity's grants: %v", err)
		}
		if _, err := v.Verify(ctx, metrics, out); !errors.Is(err, ErrMissingGrant) {
			t.Errorf("Verify(metrics-only key) = %v, want ErrMissingGrant", err)
		}
	})
}

func TestVerifyCacheAndStoreFailure(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		cachedV := newTestVerifier(t, st, time.Hour)
		uncachedV := newTestVerifier(t, st, -1)
		key, k := mustCreate(t, NewManager(st, cachedV), CreateParams{Grants: []string{GrantSMTPInject}})
		client := netip.MustParseAddr("203.0.113.5")
		for _, v := range []*Verifier{cachedV, uncachedV} {
			if _, err := v.Verify(ctx, key, client); err != nil {
				t.Fatal(err)
			}
		}

		if err := st.Close(); err != nil {
			t.Fatal(err)
		}

		// The cached lookup does not need the store.
		if id, err := cachedV.Verify(ctx, key, client); err != nil || id.KeyID != k.ID {
			t.Errorf("cached Verify with the store closed = %v, %v; want the key", id, err)
		}
		// Without cache, a store failure is returned wrapped, not as *Error,
		// so that the caller answers 454 instead of 535.
		_, err := uncachedV.Verify(ctx, key, client)
		var ae *Error
		if err == nil || errors.As(err, &ae) {
			t.Errorf("uncached Verify with the store closed = %v, want a store error that is not *auth.Error", err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "verify key: ") {
			t.Errorf("store error %q does not name the operation", err)
		}
		// A malformed key is refused without asking the store.
		if _, err := uncachedV.Verify(ctx, "not-a-key", client); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("malformed key with the store closed = %v, want ErrUnknownKey", err)
		}
	})
}

func TestVerifyDeleteAndUpdateEvict(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, time.Hour) // only eviction can make it see changes
		m := NewManager(st, v)
		key, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		a := netip.MustParseAddr("192.0.2.1")
		b := netip.MustParseAddr("198.51.100.1")
		for _, ip := range []netip.Addr{a, b} {
			if _, err := v.Verify(ctx, key, ip); err != nil {
				t.Fatalf("before update, from %v: %v", ip, err)
			}
		}

		if _, err := m.Update(ctx, k.ID, UpdateParams{AllowedIPs: []string{"192.0.2.0/24"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, key, a); err != nil {
			t.Errorf("after restricting to 192.0.2.0/24, from %v: %v", a, err)
		}
		if _, err := v.Verify(ctx, key, b); !errors.Is(err, ErrIPNotAllowed) {
			t.Errorf("after restricting to 192.0.2.0/24, from %v: %v, want ErrIPNotAllowed", b, err)
		}

		if _, err := m.Update(ctx, k.ID, UpdateParams{Grants: []string{GrantMetricsView}}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, key, a); !errors.Is(err, ErrMissingGrant) {
			t.Errorf("after removing smtp/inject: %v, want ErrMissingGrant", err)
		}
		if _, err := m.Update(ctx, k.ID, UpdateParams{Grants: []string{GrantSMTPInject}, ClearAllowedIPs: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, key, b); err != nil {
			t.Errorf("after clearing allowed IPs, from %v: %v", b, err)
		}

		if err := m.Delete(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		_, err := v.Verify(ctx, key, a)
		var ae *Error
		if !errors.Is(err, ErrRevokedKey) || !errors.As(err, &ae) || ae.KeyID != k.ID {
			t.Errorf("after Delete: %v, want ErrRevokedKey for %s", err, k.ID)
		}
	})
}

// TestVerifyOtherNode checks that a revocation made on one node reaches
// another node's cache when its TTL expired, and not before.
func TestVerifyOtherNode(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		here := newTestVerifier(t, st, time.Hour)
		shortNode := newTestVerifier(t, st, 50*time.Millisecond)
		longNode := newTestVerifier(t, st, time.Hour)
		m := NewManager(st, here)
		key, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		client := netip.MustParseAddr("192.0.2.1")
		for _, v := range []*Verifier{here, shortNode, longNode} {
			if _, err := v.Verify(ctx, key, client); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Delete(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := here.Verify(ctx, key, client); !errors.Is(err, ErrRevokedKey) {
			t.Errorf("this node after Delete: %v, want ErrRevokedKey", err)
		}
		// The other node with a 1 h TTL still trusts its cache: that is the
		// documented delay (SPEC §3).
		if _, err := longNode.Verify(ctx, key, client); err != nil {
			t.Errorf("node with a 1h TTL right after Delete: %v, want its cached success", err)
		}
		eventually(t, 10*time.Second, "node with a 50ms TTL still accepts the revoked key", func() bool {
			_, err := shortNode.Verify(ctx, key, client)
			return errors.Is(err, ErrRevokedKey)
		})
		// Eviction on the other node applies at once too.
		longNode.Evict(k.ID)
		if _, err := longNode.Verify(ctx, key, client); !errors.Is(err, ErrRevokedKey) {
			t.Errorf("node with a 1h TTL after Evict: %v, want ErrRevokedKey", err)
		}
	})
}

// TestVerifyNegativeCacheExpires checks that an unknown key, once looked up,
// is not refused for longer than the TTL after it appears in the store
// (created by another node, which cannot evict here).
func TestVerifyNegativeCacheExpires(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, 50*time.Millisecond)
		key, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		client := netip.MustParseAddr("192.0.2.1")
		if _, err := v.Verify(ctx, key, client); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("before creation: %v, want ErrUnknownKey", err)
		}
		k := &store.Key{ID: store.NewKeyID(), Label: "other node", Grants: []string{GrantSMTPInject},
			ShortKey: key[:4], Hash: HashKey(key)}
		if err := st.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "key created elsewhere still unknown", func() bool {
			_, err := v.Verify(ctx, key, client)
			return err == nil
		})
	})
}

func TestVerifyRecordsLastUse(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, 0)
		m := NewManager(st, v)
		key, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		if !k.LastUsedAt.IsZero() {
			t.Fatalf("new key already used at %v", k.LastUsedAt)
		}
		before := time.Now().Add(-time.Second)
		if _, err := v.Verify(ctx, key, netip.MustParseAddr("192.0.2.1")); err != nil {
			t.Fatal(err)
		}
		var got time.Time
		var gotIP netip.Addr
		eventually(t, 20*time.Second, "last use never written", func() bool {
			k, err := m.Get(ctx, k.ID)
			if err != nil {
				t.Fatal(err)
			}
			got, gotIP = k.LastUsedAt, k.LastUsedIP
			return !got.IsZero()
		})
		if got.Before(before) || got.After(time.Now().Add(time.Second)) {
			t.Errorf("last used %v, want about now", got)
		}
		if gotIP != netip.MustParseAddr("192.0.2.1") {
			t.Errorf("last used from %v, want 192.0.2.1", gotIP)
		}

		// A refused key is not recorded as used.
		other, ko := mustCreate(t, m, CreateParams{Grants: []string{GrantMetricsView}})
		if _, err := v.Verify(ctx, other, netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrMissingGrant) {
			t.Fatal(err)
		}
		v.Close() // writes what is pending
		if k, err := m.Get(ctx, ko.ID); err != nil || !k.LastUsedAt.IsZero() {
			t.Errorf("refused key: last used %v, %v; want never", k.LastUsedAt, err)
		}
	})
}

// TestVerifyCloseFlushes checks that uses still waiting for the writer are
// written by Close.
func TestVerifyCloseFlushes(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := NewVerifier(st, Config{})
		v.flushDelay = time.Hour // set before the first use wakes the writer
		key, k := mustCreate(t, NewManager(st, v), CreateParams{Grants: []string{GrantSMTPInject}})
		if _, err := v.Verify(ctx, key, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
		v.Close()
		v.Close() // twice is fine
		got, err := st.GetKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LastUsedAt.IsZero() {
			t.Error("Close did not write the pending last use")
		}
		// Verification keeps working after Close.
		if _, err := v.Verify(ctx, key, netip.Addr{}); err != nil {
			t.Errorf("Verify after Close: %v", err)
		}
	})
}

// TestRecordUseOncePerMinute checks the writer's rate per key without a
// store write in between.
func TestRecordUseOncePerMinute(t *testing.T) {
	t.Parallel()
	v := &Verifier{touched: map[string]time.Time{}, pending: map[string]use{}, wake: make(chan struct{}, 1)}
	t0 := time.Now()
	ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	v.recordUse("a", t0, ip1)
	v.recordUse("a", t0.Add(30*time.Second), ip2)
	v.recordUse("b", t0.Add(30*time.Second), ip2)
	if len(v.pending) != 2 || !v.pending["a"].at.Equal(t0) || v.pending["a"].ip != ip1 {
		t.Fatalf("pending %v, want a at t0 from %s and b", v.pending, ip1)
	}
	delete(v.pending, "a")
	v.recordUse("a", t0.Add(61*time.Second), ip2)
	if u := v.pending["a"]; !u.at.Equal(t0.Add(61*time.Second)) || u.ip != ip2 {
		t.Fatalf("use a minute later not recorded: %v", v.pending)
	}
}

// TestVerifyConcurrent runs verifications, evictions and updates at once
// (for the race detector) and checks every answer is one of the possible
// ones.
func TestVerifyConcurrent(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, 20*time.Millisecond)
		m := NewManager(st, v)
		key, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		bad, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for g := 0; g < 8; g++ {
			wg.Go(func() {
				for i := 0; i < 50; i++ {
					if _, err := v.Verify(ctx, key, netip.MustParseAddr("192.0.2.1")); err != nil && !errors.Is(err, ErrIPNotAllowed) {
						errs <- err
						return
					}
					if _, err := v.Verify(ctx, bad, netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrUnknownKey) {
						errs <- err
						return
					}
				}
			})
		}
		wg.Go(func() {
			for i := 0; i < 10; i++ {
				ips := []string{"192.0.2.0/24"}
				if i%2 == 1 {
					ips = []string{"198.51.100.0/24"}
				}
				if _, err := m.Update(ctx, k.ID, UpdateParams{AllowedIPs: ips}); err != nil {
					errs <- err
					return
				}
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		// The last update allowed 198.51.100.0/24 only; this node sees it.
		if _, err := v.Verify(ctx, key, netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrIPNotAllowed) {
			t.Errorf("after the last update: %v, want ErrIPNotAllowed", err)
		}
	})
}

func TestErrorText(t *testing.T) {
	t.Parallel()
	e := &Error{Reason: ErrMissingGrant, KeyID: "0123456789abcdef", ShortKey: "ab12", Grant: GrantSMTPInject,
		IP: netip.MustParseAddr("192.0.2.7")}
	want := "missing grant smtp/inject (key 0123456789abcdef, short key ab12, client 192.0.2.7)"
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
	if !errors.Is(e, ErrMissingGrant) || errors.Is(e, ErrRevokedKey) {
		t.Error("Unwrap does not return Reason")
	}
	if got := (&Error{Reason: ErrUnknownKey}).Error(); got != "unknown key" {
		t.Errorf("bare unknown key: %q", got)
	}
}

func TestVerifyHash(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, time.Hour)
		m := NewManager(st, v)
		admin, k := mustCreate(t, m, CreateParams{Grants: []string{GrantAPIKeysManage}, AllowedIPs: []string{"127.0.0.0/8"}})
		h := HashKey(admin)
		lo := netip.MustParseAddr("127.0.0.1")
		if id, err := v.VerifyHash(ctx, h, lo, GrantAPIKeysManage); err != nil || id.KeyID != k.ID {
			t.Fatalf("verify hash: %+v, %v; want key %s", id, err, k.ID)
		}
		if _, err := v.VerifyHash(ctx, h, netip.MustParseAddr("192.0.2.1"), GrantAPIKeysManage); !errors.Is(err, ErrIPNotAllowed) {
			t.Errorf("other address: %v, want ErrIPNotAllowed", err)
		}
		if _, err := v.VerifyHash(ctx, h[:31], lo, GrantAPIKeysManage); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("short hash: %v, want ErrUnknownKey", err)
		}
		// The grant removed through the Manager: refused at once, although
		// the lookup above is cached for an hour.
		if _, err := m.Update(ctx, k.ID, UpdateParams{Grants: []string{GrantSMTPInject}}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.VerifyHash(ctx, h, lo, GrantAPIKeysManage); !errors.Is(err, ErrMissingGrant) {
			t.Errorf("after the grant was removed: %v, want ErrMissingGrant", err)
		}
		if err := m.Delete(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := v.VerifyHash(ctx, h, lo, ""); !errors.Is(err, ErrRevokedKey) {
			t.Errorf("after delete: %v, want ErrRevokedKey", err)
		}
	})
}

// TestVerifyFailureBudget: refusals of the key spend one budget per client
// address; past it the key is not looked at (even a valid one) and the
// error says when to come back. A missing grant spends nothing.
func TestVerifyFailureBudget(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	v := NewVerifier(st, Config{MaxFailures: 3, FailureWindow: time.Minute})
	t.Cleanup(v.Close)
	m := NewManager(st, v)
	good, _ := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
	ctx := context.Background()
	ip := netip.MustParseAddr("203.0.113.5")
	other := netip.MustParseAddr("203.0.113.6")

	for range 5 {
		if _, err := v.VerifyGrant(ctx, good, ip, GrantMetricsView); !errors.Is(err, ErrMissingGrant) {
			t.Fatalf("missing grant: %v", err)
		}
	}
	for i := range 3 {
		if _, blocked := v.Blocked(ip); blocked {
			t.Fatalf("blocked after %d failures", i)
		}
		bad := strings.Repeat("0", 39) + strconv.Itoa(i)
		if _, err := v.VerifyGrant(ctx, bad, ip, GrantSMTPInject); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	d, blocked := v.Blocked(ip)
	if !blocked || d <= 0 || d > 20*time.Second {
		t.Fatalf("after 3 failures: blocked %v, retry after %s (want ~20s: a minute / 3)", blocked, d)
	}
	_, err := v.VerifyGrant(ctx, good, ip, GrantSMTPInject)
	var thr *ThrottledError
	if !errors.As(err, &thr) || !errors.Is(err, ErrThrottled) || thr.RetryAfter <= 0 {
		t.Fatalf("valid key from a blocked address: %v, want a ThrottledError", err)
	}
	if _, err := v.VerifyGrant(ctx, good, other, GrantSMTPInject); err != nil {
		t.Fatalf("another address is not blocked: %v", err)
	}
	// Failures a caller finds itself (an SMTP user name) count too.
	v.Fail(other)
	v.Fail(other)
	if !v.Fail(other) {
		t.Fatal("three failures reported with Fail did not block the address")
	}
}
