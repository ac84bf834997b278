package auth

import (
	"context"
	"errors"
	"fmt"
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
		ensureSubaccount(t, st, 3)
		before := time.Now().Add(-time.Second)
		key, k, err := m.Create(ctx, CreateParams{
			Label:      "  newsletter  ",
			Grants:     []string{"smtp/inject", " message_events/view", "smtp/inject", "templates/view"},
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
		if want := []string{"smtp/inject", "message_events/view", "templates/view"}; !slices.Equal(k.Grants, want) {
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

		inject := []string{GrantSMTPInject}
		mustFail := []struct {
			name  string
			p     CreateParams
			field string
			want  string
		}{
			{"no label", CreateParams{Grants: inject}, FieldLabel, "label: empty: name the key"},
			{"blank label", CreateParams{Label: " \t", Grants: inject}, FieldLabel, "label: empty"},
			{"long label", CreateParams{Label: strings.Repeat("é", MaxLabelLen+1), Grants: inject}, FieldLabel, "label: 1025 characters long: at most 1024"},
			{"label not UTF-8", CreateParams{Label: "a\xffb", Grants: inject}, FieldLabel, "label: not valid UTF-8"},
			{"no grant", CreateParams{Label: "x"}, FieldGrants, "grants: no grant given: give at least one"},
			{"blank grants", CreateParams{Label: "x", Grants: []string{" ", ""}}, FieldGrants, "grants: no grant given"},
			{"bad grant", CreateParams{Label: "x", Grants: []string{"smtp/inject", "root"}}, FieldGrants, `grants: unknown grant "root": smtpgw enforces`},
			{"bad ip", CreateParams{Label: "x", Grants: inject, AllowedIPs: []string{"10.0.0.0/33"}}, FieldAllowedIPs, `allowed IPs: "10.0.0.0/33" is not an IP address or CIDR prefix`},
			{"second ip bad", CreateParams{Label: "x", Grants: inject, AllowedIPs: []string{"10.0.0.1", "fe80::1%eth0"}}, FieldAllowedIPs, `"fe80::1%eth0"`},
			{"negative subaccount", CreateParams{Label: "x", Grants: inject, Subaccount: -1}, FieldSubaccount, "subaccount: -1 is not a subaccount id"},
			{"metrics for subaccount", CreateParams{Label: "x", Grants: []string{GrantSMTPInject, GrantMetricsView}, Subaccount: 3}, FieldGrants,
				"grants: metrics/view is for master-account keys only: the metrics cover every account"},
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
			checkParamError(t, c.name, err, "create key: ", c.field, c.want)
		}
		// A label of exactly MaxLabelLen characters is fine, and so is
		// metrics/view for a master-account key.
		mustCreate(t, m, CreateParams{Label: strings.Repeat("é", MaxLabelLen), Grants: []string{GrantMetricsView}})

		keys, _, err := m.List(ctx, store.KeyFilter{})
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
		seven := int64(7)
		ensureSubaccount(t, st, 7)
		unknown := int64(99)
		mustFail := []struct {
			name  string
			p     UpdateParams
			field string
			want  string
		}{
			{"empty label", UpdateParams{Label: &empty}, FieldLabel, "label: empty"},
			{"empty grants", UpdateParams{Grants: []string{}}, FieldGrants, "grants: no grant given"},
			{"bad grant", UpdateParams{Grants: []string{"nope"}}, FieldGrants, `grants: unknown grant "nope"`},
			{"bad ip", UpdateParams{AllowedIPs: []string{"10.0.0.0/33"}}, FieldAllowedIPs, `allowed IPs: "10.0.0.0/33" is not`},
			{"negative subaccount", UpdateParams{Subaccount: &neg}, FieldSubaccount, "subaccount: -5 is not a subaccount id"},
			{"unknown subaccount", UpdateParams{Subaccount: &unknown}, FieldSubaccount, "subaccount: no subaccount 99: create it first"},
			{"ips and clear", UpdateParams{AllowedIPs: []string{"10.0.0.1"}, ClearAllowedIPs: true}, FieldAllowedIPs, "allowed IPs: both given and cleared: give one"},
			{"metrics to subaccount", UpdateParams{Grants: []string{GrantMetricsView}, Subaccount: &seven}, FieldGrants, "grants: metrics/view is for master-account keys only"},
		}
		for _, c := range mustFail {
			_, err := m.Update(ctx, k.ID, c.p)
			checkParamError(t, c.name, err, "update key "+k.ID+": ", c.field, c.want)
		}
		if got2, err := m.Get(ctx, k.ID); err != nil || got2.Label != "b" || !slices.Equal(got2.Grants, []string{GrantEventsView}) {
			t.Errorf("a refused update changed the key: %+v, %v", got2, err)
		}

		if _, err := m.Update(ctx, "0000000000000000", UpdateParams{Label: &label}); !errors.Is(err, store.ErrNotFound) || errors.Is(err, ErrInvalid) {
			t.Errorf("update of a missing key: %v, want store.ErrNotFound", err)
		}
		// Bad input is refused before the store is asked, even for a
		// missing key.
		if _, err := m.Update(ctx, "0000000000000000", UpdateParams{Grants: []string{"nope"}}); !errors.Is(err, ErrInvalid) {
			t.Errorf("bad grants for a missing key: %v, want ErrInvalid", err)
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
		keys, _, err := m.List(ctx, store.KeyFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || keys[0].ID != keep.ID {
			t.Errorf("List after Delete: %d keys, want only %s", len(keys), keep.ID)
		}
	})
}

func TestManagerMetricsGrantMasterOnly(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		m := NewManager(st, nil)
		_, master := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject, GrantMetricsView}})
		_, sub := mustCreate(t, m, CreateParams{Grants: []string{GrantSMTPInject}, Subaccount: 4})

		// A master key holding metrics/view cannot move to a subaccount...
		four := int64(4)
		_, err := m.Update(ctx, master.ID, UpdateParams{Subaccount: &four})
		checkParamError(t, "move metrics key", err, "update key "+master.ID+": ", FieldSubaccount,
			"subaccount: the key holds metrics/view, which a subaccount key may not hold")
		// ...unless the same update drops the grant.
		got, err := m.Update(ctx, master.ID, UpdateParams{Subaccount: &four, Grants: []string{GrantSMTPInject}})
		if err != nil || got.Subaccount != 4 || !slices.Equal(got.Grants, []string{GrantSMTPInject}) {
			t.Errorf("move dropping metrics/view: %+v, %v", got, err)
		}

		// A subaccount key cannot be given metrics/view...
		_, err = m.Update(ctx, sub.ID, UpdateParams{Grants: []string{GrantMetricsView}})
		checkParamError(t, "grant metrics to subaccount key", err, "update key "+sub.ID+": ", FieldGrants,
			"grants: metrics/view is for master-account keys only: the metrics cover every account, so a key of subaccount 4 may not read them")
		// ...but may get it when it moves to the master account.
		zero := int64(0)
		got, err = m.Update(ctx, sub.ID, UpdateParams{Grants: []string{GrantMetricsView}, Subaccount: &zero})
		if err != nil || got.Subaccount != 0 || !slices.Equal(got.Grants, []string{GrantMetricsView}) {
			t.Errorf("grant metrics/view moving to master: %+v, %v", got, err)
		}

		// A key stored before the rule keeps working: changing only its
		// label is not refused for a grant the admin did not touch.
		legacy := &store.Key{ID: store.NewKeyID(), Label: "old", Grants: []string{GrantMetricsView},
			ShortKey: "abcd", Hash: HashKey(strings.Repeat("ab", 20)), Subaccount: 9}
		if err := st.CreateKey(ctx, legacy); err != nil {
			t.Fatal(err)
		}
		label := "renamed"
		if got, err := m.Update(ctx, legacy.ID, UpdateParams{Label: &label}); err != nil || got.Label != "renamed" {
			t.Errorf("label change of a legacy key: %+v, %v", got, err)
		}
	})
}

func TestParamError(t *testing.T) {
	t.Parallel()
	cause := errors.New(`"x" is not an IP address or CIDR prefix`)
	e := &ParamError{Field: FieldAllowedIPs, Err: cause}
	if got, want := e.Error(), `allowed IPs: "x" is not an IP address or CIDR prefix`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	wrapped := fmt.Errorf("create key: %w", e)
	if !errors.Is(wrapped, ErrInvalid) || !errors.Is(wrapped, cause) {
		t.Errorf("%v: errors.Is ErrInvalid/cause false", wrapped)
	}
	if errors.Is(wrapped, store.ErrNotFound) || errors.Is(errors.New("other"), ErrInvalid) {
		t.Error("errors.Is matches what it should not")
	}
	if (&ParamError{Field: FieldLabel, Err: errors.New("empty")}).Error() != "label: empty" {
		t.Error("label error not prefixed with its field")
	}
	if (&ParamError{Err: errors.New("bad")}).Error() != "bad" {
		t.Error("error without a field not shown as is")
	}
	// The exported validators return it too.
	for _, err := range []error{ValidateGrants(nil), ValidateGrants([]string{"nope"}), func() error {
		_, err := ParseAllowedIPs([]string{"nope"})
		return err
	}()} {
		var pe *ParamError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &pe) || strings.Count(err.Error(), ":") < 1 ||
			strings.Contains(err.Error(), "validate") {
			t.Errorf("%v: want a *ParamError without a doubled prefix", err)
		}
	}
}

// checkParamError asserts err is a *ParamError for field, matching
// ErrInvalid, whose message starts with prefix and contains want.
func checkParamError(t *testing.T, name string, err error, prefix, field, want string) {
	t.Helper()
	var pe *ParamError
	switch {
	case err == nil:
		t.Errorf("%s: no error, want one for %s", name, field)
	case !errors.Is(err, ErrInvalid):
		t.Errorf("%s: %v: errors.Is(err, ErrInvalid) = false", name, err)
	case !errors.As(err, &pe):
		t.Errorf("%s: %v: not a *ParamError", name, err)
	case pe.Field != field:
		t.Errorf("%s: %v: Field %q, want %q", name, err, pe.Field, field)
	case !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), want):
		t.Errorf("%s: %q, want it to start with %q and contain %q", name, err, prefix, want)
	case strings.Contains(err.Error(), "\n"):
		t.Errorf("%s: %q spans lines", name, err)
	}
}
