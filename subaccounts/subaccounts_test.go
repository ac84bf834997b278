package subaccounts

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

func TestService(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		v := auth.NewVerifier(st, auth.Config{})
		t.Cleanup(v.Close)
		s := New(st, auth.NewManager(st, v), v)

		c, err := s.Create(ctx, CreateParams{Name: "  Acme  ", SetupKey: true, KeyLabel: "acme smtp",
			KeyGrants: []string{auth.GrantSMTPInject}, KeyValidIPs: []string{"192.0.2.0/24"}})
		if err != nil {
			t.Fatal(err)
		}
		if c.Subaccount.ID <= 0 || c.Subaccount.Name != "Acme" || c.Subaccount.Status != store.SubaccountActive ||
			!auth.WellFormed(c.Key) || c.KeyRecord.Subaccount != c.Subaccount.ID || c.KeyRecord.Label != "acme smtp" {
			t.Fatalf("created %+v", c)
		}
		client := netip.MustParseAddr("192.0.2.9")
		if id, err := v.Verify(ctx, c.Key, client); err != nil || id.Subaccount != c.Subaccount.ID {
			t.Fatalf("setup key: %v, %v", id, err)
		}
		if _, err := s.Create(ctx, CreateParams{ID: 77, Name: "kept"}); err != nil {
			t.Fatal(err)
		}
		list, err := s.List(ctx)
		if err != nil || len(list) != 2 || list[1].ID != 77 {
			t.Errorf("List = %v, %v", list, err)
		}

		mustFail := []struct {
			name  string
			p     CreateParams
			field string
		}{
			{"no name", CreateParams{Name: " "}, FieldName},
			{"control character", CreateParams{Name: "a\x1bb"}, FieldName},
			{"long name", CreateParams{Name: strings.Repeat("x", MaxNameLen+1)}, FieldName},
			{"negative id", CreateParams{ID: -1, Name: "x"}, FieldID},
			{"taken id", CreateParams{ID: 77, Name: "x"}, FieldID},
			{"key without grants", CreateParams{Name: "x", SetupKey: true, KeyLabel: "k"}, auth.FieldGrants},
			{"key with metrics", CreateParams{Name: "x", SetupKey: true, KeyLabel: "k", KeyGrants: []string{auth.GrantMetricsView}}, auth.FieldGrants},
		}
		for _, tc := range mustFail {
			_, err := s.Create(ctx, tc.p)
			var pe *ParamError
			var ape *auth.ParamError
			switch {
			case errors.As(err, &pe) && pe.Field == tc.field && errors.Is(err, ErrInvalid):
			case errors.As(err, &ape) && ape.Field == tc.field:
			default:
				t.Errorf("%s: %v; want a refusal of %s", tc.name, err, tc.field)
			}
		}
		if list, _ := s.List(ctx); len(list) != 2 {
			t.Errorf("refused creations stored subaccounts: %v", list)
		}

		id := c.Subaccount.ID
		suspended := "Suspended"
		sa, _, err := s.Update(ctx, id, UpdateParams{Status: &suspended})
		if err != nil || sa.Status != store.SubaccountSuspended {
			t.Fatalf("suspend: %+v, %v", sa, err)
		}
		if _, err := v.Verify(ctx, c.Key, client); !errors.Is(err, auth.ErrSubaccountInactive) {
			t.Errorf("suspended subaccount's key at once on this node: %v", err)
		}
		active := "active"
		if _, _, err := s.Update(ctx, id, UpdateParams{Status: &active}); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, c.Key, client); err != nil {
			t.Errorf("reactivated subaccount's key: %v", err)
		}
		terminated, name := "terminated", "Acme (closed)"
		if _, _, err := s.Update(ctx, id, UpdateParams{Status: &terminated, Name: &name}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Update(ctx, id, UpdateParams{Status: &active}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "final") {
			t.Errorf("reactivating a terminated subaccount: %v", err)
		}
		bad := "paused"
		if _, _, err := s.Update(ctx, id, UpdateParams{Status: &bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("unknown status: %v", err)
		}
		if _, _, err := s.Update(ctx, id, UpdateParams{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("empty update: %v", err)
		}
		if _, _, err := s.Update(ctx, 999, UpdateParams{Name: &name}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("update of a missing subaccount: %v", err)
		}
		if got, err := s.Get(ctx, id); err != nil || got.Name != name || got.Status != store.SubaccountTerminated {
			t.Errorf("Get = %+v, %v", got, err)
		}
	})
}
