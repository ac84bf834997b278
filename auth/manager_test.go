package auth

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

func TestManagerCreate(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		m := NewManager(st, nil)
		before := time.Now().Add(-time.Second)
		key, k, err := m.Create(ctx, CreateParams{
			Label:      "  newsletter  ",
			Grants:     []string{"smtp/inject", " metrics/view", "smtp/inject", "templates/view"},
			Subaccount: 3,
			AllowedIPs: []string{"192.0.2.7", "2001:db8::/32"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if !WellFormed(key) {
			t.Fatalf("created key %q is not well formed", key)
		}
		if k.ShortKey != key[:4] || string(k.Hash) != string(HashKey(key)) || len(k.ID) != 16 {
			t.Errorf("record %+v does not match key", k)
		}
		if k.Label != "newsletter" || k.Subaccount != 3 {
			t.Errorf("label %q subaccount %d", k.Label, k.Subaccount)
		}
		if want := []string{"smtp/inject", "metrics/view", "templates/view"}; !slices.Equal(k.Grants, want) {
			t.Errorf("grants %q, want %q", k.Grants, want)
		}

		got, err := m.Get(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Label != "newsletter" || !slices.Equal(got.Grants, k.Grants) || got.Subaccount != 3 ||
			len(got.AllowedIPs) != 2 || got.AllowedIPs[0].String() != "192.0.2.7/32" ||
			got.AllowedIPs[1].String() != "2001:db8::/32" || string(got.Hash) != string(k.Hash) {
			t.Errorf("stored %+v, want %+v", got, k)
		}
		if got.CreatedAt.Before(before) || got.CreatedAt.After(time.Now().Add(time.Second)) {
			t.Errorf("created at %v, want about now", got.CreatedAt)
		}
		if strings.Contains(strings.ToLower(got.Label+got.ShortKey+got.ID), key) {
			t.Error("the key itself is stored")
		}

		mustFail := []struct {
			name string
			p    CreateParams
			want string
		}{
			{"no label", CreateParams{Grants: []string{GrantSMTPInject}}, "label is required"},
			{"blank label", CreateParams{Label: " \t", Grants: []string{GrantSMTPInject}}, "label is required"},
			{"long label", CreateParams{Label: strings.Repeat("é", MaxLabelLen+1), Grants: []string{GrantSMTPInject}}, "at most 1024"},
			{"no grant", CreateParams{Label: "x"}, "no grant"},
			{"bad grant", CreateParams{Label: "x", Grants: []string{"smtp/inject", "root"}}, `unknown grant "root"`},
			{"bad ip", CreateParams{Label: "x", Grants: []string{GrantSMTPInject}, AllowedIPs: []string{"10.0.0.0/33"}}, `"10.0.0.0/33" is not an IP address or CIDR prefix`},
			{"negative subaccount", CreateParams{Label: "x", Grants: []string{GrantSMTPInject}, Subaccount: -1}, "subaccount -1"},
		}
		for _, c := range mustFail {
			key, k, err := m.Create(ctx, c.p)
			if err == nil {
				t.Errorf("%s: created %+v, want an error", c.name, k)
				continue
			}
			if key != "" || k != nil {
				t.Errorf("%s: returned a key with the error", c.name)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "create key: ") {
				t.Errorf("%s: %q, want it to contain %q", c.name, err, c.want)
			}
		}
		// A label of exactly MaxLabelLen characters is fine.
		mustCreate(t, m, CreateParams{Label: strings.Repeat("é", MaxLabelLen), Grants: []string{GrantSMTPInject}})

		keys, err := m.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 2 || keys[0].ID != k.ID {
			t.Errorf("List: %d keys, want 2 starting with %s", len(keys), k.ID)
		}
	})
}

func TestManagerUpdate(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		m := NewManager(st, nil)
		_, k := mustCreate(t, m, CreateParams{Label: "a", Grants: []string{GrantSMTPInject}, Subaccount: 2, AllowedIPs: []string{"192.0.2.0/24"}})

		// Nil fields keep their value.
		label := "b"
		u, err := m.Update(ctx, k.ID, UpdateParams{Label: &label})
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Get(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if u.Label != "b" || got.Label != "b" || !slices.Equal(got.Grants, []string{GrantSMTPInject}) ||
			got.Subaccount != 2 || len(got.AllowedIPs) != 1 {
			t.Errorf("after label update: %+v", got)
		}

		zero := int64(0)
		if _, err := m.Update(ctx, k.ID, UpdateParams{Grants: []string{GrantEventsView, GrantEventsView}, Subaccount: &zero, AllowedIPs: []string{"10.0.0.1"}}); err != nil {
			t.Fatal(err)
		}
		got, err = m.Get(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Grants, []string{GrantEventsView}) || got.Subaccount != 0 ||
			len(got.AllowedIPs) != 1 || got.AllowedIPs[0].String() != "10.0.0.1/32" || got.Label != "b" {
			t.Errorf("after update: %+v", got)
		}

		if _, err := m.Update(ctx, k.ID, UpdateParams{ClearAllowedIPs: true}); err != nil {
			t.Fatal(err)
		}
		if got, err = m.Get(ctx, k.ID); err != nil || len(got.AllowedIPs) != 0 {
			t.Errorf("after clearing allowed IPs: %v, %v", got.AllowedIPs, err)
		}

		empty := ""
		neg := int64(-5)
		mustFail := []struct {
			name string
			p    UpdateParams
			want string
		}{
			{"empty label", UpdateParams{Label: &empty}, "label is required"},
			{"empty grants", UpdateParams{Grants: []string{}}, "no grant"},
			{"bad grant", UpdateParams{Grants: []string{"nope"}}, `"nope"`},
			{"bad ip", UpdateParams{AllowedIPs: []string{"10.0.0.0/33"}}, `"10.0.0.0/33"`},
			{"negative subaccount", UpdateParams{Subaccount: &neg}, "subaccount -5"},
			{"ips and clear", UpdateParams{AllowedIPs: []string{"10.0.0.1"}, ClearAllowedIPs: true}, "give one"},
		}
		for _, c := range mustFail {
			if _, err := m.Update(ctx, k.ID, c.p); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
			}
		}
		if got2, err := m.Get(ctx, k.ID); err != nil || got2.Label != "b" || !slices.Equal(got2.Grants, []string{GrantEventsView}) {
			t.Errorf("a refused update changed the key: %+v, %v", got2, err)
		}

		if _, err := m.Update(ctx, "0000000000000000", UpdateParams{Label: &label}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("update of a missing key: %v, want store.ErrNotFound", err)
		}
	})
}

func TestManagerDelete(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		m := NewManager(st, nil)
		_, k := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		_, keep := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}})
		if err := m.Delete(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(ctx, k.ID); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("second Delete: %v, want store.ErrNotFound", err)
		}
		if err := m.Delete(ctx, "ffffffffffffffff"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Delete of a missing key: %v, want store.ErrNotFound", err)
		}
		if _, err := m.Get(ctx, k.ID); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get of a deleted key: %v, want store.ErrNotFound", err)
		}
		label := "x"
		if _, err := m.Update(ctx, k.ID, UpdateParams{Label: &label}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Update of a deleted key: %v, want store.ErrNotFound", err)
		}
		keys, err := m.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || keys[0].ID != keep.ID {
			t.Errorf("List after Delete: %d keys, want only %s", len(keys), keep.ID)
		}
	})
}
