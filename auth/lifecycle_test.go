package auth

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestVerifyExpiry: a key is refused with ErrExpiredKey from its expiry
// on, also when it comes from the cache, whose TTL never extends it.
func TestVerifyExpiry(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, time.Hour) // entries outlive the key
		m := NewManager(st, v)
		exp := time.Now().Add(time.Hour)
		key, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}, ExpiresAt: exp})
		if !k.ExpiresAt.Equal(exp.UTC().Truncate(time.Microsecond)) {
			t.Fatalf("stored expiry %v, want %v", k.ExpiresAt, exp)
		}
		ip := netip.MustParseAddr("192.0.2.1")
		if _, err := v.Verify(ctx, key, ip); err != nil {
			t.Fatalf("before expiry: %v", err)
		}
		// The clock passes the expiry while the key sits in the cache.
		v.now = func() time.Time { return exp.Add(time.Millisecond) }
		_, err := v.Verify(ctx, key, ip)
		var ae *Error
		if !errors.As(err, &ae) || !errors.Is(err, ErrExpiredKey) || ae.KeyID != k.ID {
			t.Fatalf("after expiry (cached): %v, want ErrExpiredKey for %s", err, k.ID)
		}
		if want := "expired key (key " + k.ID; ae.Error()[:len(want)] != want {
			t.Errorf("log text %q, want it to start with %q", ae.Error(), want)
		}
		// Made never to expire again: accepted at once on this node.
		if _, err := m.Update(ctx, k.ID, UpdateParams{ClearExpiry: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, key, ip); err != nil {
			t.Errorf("after clearing the expiry: %v", err)
		}
	})
}

// TestManagerExpiryParams: expiry input the admin must fix.
func TestManagerExpiryParams(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	m := NewManager(st, nil)
	ctx := context.Background()
	_, _, err := m.Create(ctx, CreateParams{Label: "x", Grants: []string{GrantSMTPInject}, ExpiresAt: time.Now().Add(-time.Minute)})
	checkParamError(t, "past expiry", err, "create key: ", FieldExpiresAt, "not in the future")
	_, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
	_, err = m.Update(ctx, k.ID, UpdateParams{ExpiresAt: time.Now().Add(time.Hour), ClearExpiry: true})
	checkParamError(t, "both", err, "update key ", FieldExpiresAt, "both given and cleared")

	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2027-01-31T00:00:00Z":      time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC),
		"2027-01-31T02:00:00+02:00": time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC),
		"720h":                      now.Add(720 * time.Hour),
		"90d":                       now.Add(90 * 24 * time.Hour),
		" 30m ":                     now.Add(30 * time.Minute),
	} {
		if got, err := ParseExpiry(in, now); err != nil || !got.Equal(want) {
			t.Errorf("ParseExpiry(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "tomorrow", "2027-01-31", "-d", "1y"} {
		if _, err := ParseExpiry(bad, now); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseExpiry(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	for in, want := range map[string]time.Duration{"24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "0": 0, "90m": 90 * time.Minute} {
		if got, err := ParseOverlap(in); err != nil || got != want {
			t.Errorf("ParseOverlap(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseOverlap("-1h"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseOverlap(-1h) = %v, want ErrInvalid", err)
	}
}

// TestManagerRotate: the twin key has the old one's label, grants,
// subaccount, allowed IPs and limits; both work during the overlap, after
// which the old one is refused as expired.
func TestManagerRotate(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := newTestVerifier(t, st, time.Hour)
		m := NewManager(st, v)
		oldKey, old := mustCreate(t, m, CreateParams{Label: "shop", Grants: []string{GrantSMTPInject, "templates/view"},
			Subaccount: 5, AllowedIPs: []string{"192.0.2.0/24"}})
		lim := store.Limits{PerHour: 100, PerMonth: 9000}
		if err := st.SetLimits(ctx, store.LimitScope{Kind: store.LimitKindKey, ID: old.ID}, lim); err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr("192.0.2.9")
		if _, err := v.Verify(ctx, oldKey, ip); err != nil { // cached now
			t.Fatal(err)
		}
		before := time.Now()
		newKey, k, was, err := m.Rotate(ctx, old.ID, 6*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if !WellFormed(newKey) || k.ID == old.ID || k.Label != "shop" || !slices.Equal(k.Grants, old.Grants) ||
			k.Subaccount != 5 || !slices.Equal(k.AllowedIPs, old.AllowedIPs) || !k.ExpiresAt.IsZero() {
			t.Errorf("rotated key %+v, want a twin of %+v without expiry", k, old)
		}
		if l, err := st.GetLimits(ctx, store.LimitScope{Kind: store.LimitKindKey, ID: k.ID}); err != nil || l != lim {
			t.Errorf("rotated key limits %+v, %v; want %+v", l, err, lim)
		}
		if was.ExpiresAt.Before(before.Add(6*time.Hour).Truncate(time.Microsecond)) || was.ExpiresAt.After(time.Now().Add(6*time.Hour)) {
			t.Errorf("old key expires %v, want 6h from now", was.ExpiresAt)
		}
		for _, key := range []string{oldKey, newKey} {
			if _, err := v.Verify(ctx, key, ip); err != nil {
				t.Errorf("during the overlap: %v", err)
			}
		}
		v.now = func() time.Time { return was.ExpiresAt }
		if _, err := v.Verify(ctx, oldKey, ip); !errors.Is(err, ErrExpiredKey) {
			t.Errorf("old key after the overlap: %v, want ErrExpiredKey", err)
		}
		if _, err := v.Verify(ctx, newKey, ip); err != nil {
			t.Errorf("new key after the overlap: %v", err)
		}
		v.now = time.Now

		// Rotating again with a longer overlap keeps the sooner expiry;
		// overlap 0 stops the key at once.
		_, _, again, err := m.Rotate(ctx, old.ID, 48*time.Hour)
		if err != nil || !again.ExpiresAt.Equal(was.ExpiresAt) {
			t.Errorf("second rotation: expiry %v, %v; want it kept at %v", again.ExpiresAt, err, was.ExpiresAt)
		}
		if _, _, _, err := m.Rotate(ctx, k.ID, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, newKey, ip); !errors.Is(err, ErrExpiredKey) {
			t.Errorf("after overlap 0: %v, want ErrExpiredKey", err)
		}
		_, _, _, err = m.Rotate(ctx, old.ID, -time.Minute)
		checkParamError(t, "negative overlap", err, "rotate key ", FieldOverlap, "negative")
		if _, _, _, err := m.Rotate(ctx, "0123456789abcdef", time.Hour); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("rotate missing key: %v, want ErrNotFound", err)
		}
	})
}
