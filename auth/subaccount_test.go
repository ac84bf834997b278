package auth

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestSubaccountKeys: a key belongs only to an existing, not terminated
// subaccount; a suspended or terminated subaccount's keys are refused, at
// once on this node after EvictSubaccount and within the cache TTL on
// others; a master key may act only for an active subaccount.
func TestSubaccountKeys(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		m := NewManager(st, nil)
		if _, _, err := m.Create(ctx, CreateParams{Label: "x", Grants: []string{GrantSMTPInject}, Subaccount: 5}); !errors.Is(err, ErrInvalid) ||
			!strings.Contains(err.Error(), "no subaccount 5") {
			t.Errorf("key for a missing subaccount: %v", err)
		}
		sa := &store.Subaccount{Name: "tenant"}
		if err := st.CreateSubaccount(ctx, sa); err != nil {
			t.Fatal(err)
		}
		key, _ := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}, Subaccount: sa.ID})
		client := netip.MustParseAddr("192.0.2.1")

		const ttl = 200 * time.Millisecond
		local := newTestVerifier(t, st, ttl)       // the node that suspends (evicts)
		other := newTestVerifier(t, st, time.Hour) // a node that only waits for its TTL
		other.ttl = ttl
		for _, v := range []*Verifier{local, other} {
			if id, err := v.Verify(ctx, key, client); err != nil || id.Subaccount != sa.ID {
				t.Fatalf("active subaccount's key: %v, %v", id, err)
			}
			if err := v.CheckSubaccount(ctx, sa.ID); err != nil {
				t.Errorf("CheckSubaccount(active) = %v", err)
			}
		}
		sa.Status = store.SubaccountSuspended
		if _, err := st.UpdateSubaccount(ctx, sa); err != nil {
			t.Fatal(err)
		}
		local.EvictSubaccount(sa.ID)
		_, err := local.Verify(ctx, key, client)
		var ae *Error
		if !errors.As(err, &ae) || !errors.Is(err, ErrSubaccountInactive) || ae.KeyID == "" ||
			!strings.Contains(err.Error(), "status suspended") {
			t.Errorf("suspended subaccount's key on the evicting node: %v", err)
		}
		eventually(t, 5*time.Second, "other node refuses the suspended subaccount's key", func() bool {
			_, err := other.Verify(ctx, key, client)
			return errors.Is(err, ErrSubaccountInactive)
		})
		if err := local.CheckSubaccount(ctx, sa.ID); !errors.Is(err, ErrSubaccountInactive) {
			t.Errorf("CheckSubaccount(suspended) = %v", err)
		}
		if err := local.CheckSubaccount(ctx, 404); !errors.Is(err, ErrUnknownSubaccount) {
			t.Errorf("CheckSubaccount(unknown) = %v", err)
		}
		if err := local.CheckSubaccount(ctx, 0); err != nil {
			t.Errorf("CheckSubaccount(master) = %v", err)
		}
		sa.Status = store.SubaccountTerminated
		if _, err := st.UpdateSubaccount(ctx, sa); err != nil {
			t.Fatal(err)
		}
		if _, _, err := m.Create(ctx, CreateParams{Label: "x", Grants: []string{GrantSMTPInject}, Subaccount: sa.ID}); !errors.Is(err, ErrInvalid) ||
			!strings.Contains(err.Error(), "terminated") {
			t.Errorf("key for a terminated subaccount: %v", err)
		}
	})
}
