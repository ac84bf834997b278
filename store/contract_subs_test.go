package store

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Contract tests of subaccounts, the suppression list and sending domain
// status: both backends.

func TestSubaccounts(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		a := &Subaccount{Name: "Tenant A"}
		if err := e.s.CreateSubaccount(ctx, a); err != nil {
			t.Fatal(err)
		}
		b := &Subaccount{Name: "Tenant B", Status: SubaccountSuspended}
		if err := e.s.CreateSubaccount(ctx, b); err != nil {
			t.Fatal(err)
		}
		if a.ID <= 0 || b.ID <= a.ID || a.Status != SubaccountActive || a.CreatedAt.IsZero() {
			t.Fatalf("created %+v and %+v", a, b)
		}
		c := &Subaccount{ID: 40, Name: "kept id from SparkPost"}
		if err := e.s.CreateSubaccount(ctx, c); err != nil || c.ID != 40 {
			t.Fatalf("create with id 40: %v (id %d)", err, c.ID)
		}
		if err := e.s.CreateSubaccount(ctx, &Subaccount{ID: 40, Name: "again"}); !errors.Is(err, ErrExists) {
			t.Errorf("create with a taken id: %v", err)
		}
		d := &Subaccount{Name: "after an explicit id"}
		if err := e.s.CreateSubaccount(ctx, d); err != nil || d.ID != 41 {
			t.Errorf("next id after 40 = %d, %v; want 41", d.ID, err)
		}
		got, err := e.s.GetSubaccount(ctx, a.ID)
		if err != nil || !reflect.DeepEqual(got, a) {
			t.Errorf("GetSubaccount = %+v, %v; want %+v", got, err, a)
		}
		if _, err := e.s.GetSubaccount(ctx, 999); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetSubaccount(999): %v", err)
		}
		list, err := e.s.ListSubaccounts(ctx)
		if err != nil || len(list) != 4 || list[0].ID != a.ID || list[1].Status != SubaccountSuspended {
			t.Errorf("ListSubaccounts = %v, %v", list, err)
		}
		a.Name, a.Status = "Tenant A2", SubaccountTerminated
		if _, err := e.s.UpdateSubaccount(ctx, a); err != nil {
			t.Fatal(err)
		}
		got, _ = e.s.GetSubaccount(ctx, a.ID)
		if got.Name != "Tenant A2" || got.Status != SubaccountTerminated {
			t.Errorf("after update: %+v", got)
		}
		if _, err := e.s.UpdateSubaccount(ctx, &Subaccount{ID: 999, Name: "x", Status: "active"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("UpdateSubaccount(999): %v", err)
		}
	})
}

// TestSubaccountHoldAndDrop: a suspended subaccount's queued mail is not
// claimed and comes back on reactivation; a terminated one's is dropped
// with policy_rejection events; the master account's mail is untouched.
func TestSubaccountHoldAndDrop(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		sub := &Subaccount{Name: "t"}
		if err := e.s.CreateSubaccount(ctx, sub); err != nil {
			t.Fatal(err)
		}
		m := newMsg(2)
		m.Subaccount = sub.ID
		master := newMsg(1)
		master.Subaccount = 0
		for _, x := range []*Message{m, master} {
			if err := e.s.Enqueue(ctx, x); err != nil {
				t.Fatal(err)
			}
		}
		sub.Status = SubaccountSuspended
		n, err := e.s.UpdateSubaccount(ctx, sub)
		if err != nil || n != 2 {
			t.Fatalf("suspend: held %d, %v; want 2", n, err)
		}
		claimed, err := e.s.ClaimDue(ctx, "w1", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(claimed) != 1 || claimed[0].MessageID != master.ID {
			t.Fatalf("claim while suspended = %v, %v; want only the master's recipient", claimed, err)
		}
		if n, err := e.s.ApplySubaccountStatus(ctx); err != nil || n != 0 {
			t.Errorf("ApplySubaccountStatus again = %d, %v; want 0 (idempotent)", n, err)
		}
		sub.Status = SubaccountActive
		if n, err := e.s.UpdateSubaccount(ctx, sub); err != nil || n != 2 {
			t.Fatalf("reactivate: released %d, %v; want 2", n, err)
		}
		claimed, err = e.s.ClaimDue(ctx, "w1", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(claimed) != 2 || claimed[0].MessageID != m.ID {
			t.Fatalf("claim after reactivation = %v, %v; want the subaccount's 2 recipients", claimed, err)
		}
		if _, err := e.s.ReleaseLeases(ctx, "w1"); err != nil {
			t.Fatal(err)
		}
		sub.Status = SubaccountTerminated
		if n, err := e.s.UpdateSubaccount(ctx, sub); err != nil || n != 2 {
			t.Fatalf("terminate: dropped %d, %v; want 2", n, err)
		}
		got, err := e.s.GetMessage(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range got.Recipients {
			if r.State != StateBounced || r.LastReply != SubaccountDroppedReply {
				t.Errorf("dropped recipient %+v", r)
			}
		}
		evs, err := e.s.ListEvents(ctx, EventFilter{MessageID: m.ID, Types: []string{EventPolicyRejection}})
		if err != nil || len(evs) != 2 || evs[0].Subaccount != sub.ID || evs[0].CampaignID != "spring" || len(evs[0].Tags) != 2 {
			t.Errorf("policy_rejection events = %+v, %v", evs, err)
		}
		mm, _ := e.s.GetMessage(ctx, master.ID)
		if mm.Recipients[0].State != StateQueued {
			t.Errorf("master's recipient changed: %+v", mm.Recipients[0])
		}
	})
}

func TestSuppressions(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		in := []Suppression{
			{Recipient: "A@Example.com", Type: SuppressTransactional, Source: SourceManual, Description: "asked by phone"},
			{Recipient: "a@example.com", Type: SuppressNonTransactional, Source: SourceBounce, Description: "550 5.1.1"},
			{Recipient: "b@example.org", Type: SuppressNonTransactional, Source: SourceManual},
			{Subaccount: 3, Recipient: "c@example.com", Type: SuppressTransactional, Source: SourceManual},
		}
		if err := e.s.UpsertSuppressions(ctx, in); err != nil {
			t.Fatal(err)
		}
		all, total, err := e.s.ListSuppressions(ctx, SuppressionFilter{})
		if err != nil || total != 4 || len(all) != 4 || all[0].Recipient != "a@example.com" || all[0].Type != SuppressNonTransactional {
			t.Fatalf("list = %+v, %d, %v", all, total, err)
		}
		created := all[1].CreatedAt
		// Update keeps created, changes the description.
		time.Sleep(2 * time.Millisecond)
		if err := e.s.UpsertSuppressions(ctx, []Suppression{{Recipient: "a@example.com", Type: SuppressTransactional,
			Source: SourceManual, Description: "changed"}}); err != nil {
			t.Fatal(err)
		}
		sub0 := int64(0)
		page, total, err := e.s.ListSuppressions(ctx, SuppressionFilter{Subaccount: &sub0, Limit: 2})
		if err != nil || total != 3 || len(page) != 2 {
			t.Fatalf("page 1 = %+v, %d, %v", page, total, err)
		}
		if page[1].Description != "changed" || !page[1].CreatedAt.Equal(created) || !page[1].UpdatedAt.After(created) {
			t.Errorf("updated entry %+v (created before %v)", page[1], created)
		}
		page2, _, err := e.s.ListSuppressions(ctx, SuppressionFilter{Subaccount: &sub0, Limit: 2, After: &page[1]})
		if err != nil || len(page2) != 1 || page2[0].Recipient != "b@example.org" {
			t.Errorf("page 2 = %+v, %v", page2, err)
		}
		for _, tc := range []struct {
			name string
			f    SuppressionFilter
			want int64
		}{
			{"types", SuppressionFilter{Types: []string{SuppressTransactional}}, 2},
			{"recipient", SuppressionFilter{Recipient: "A@example.COM"}, 2},
			{"sources", SuppressionFilter{Sources: []string{SourceBounce}}, 1},
			{"domain", SuppressionFilter{Domain: "example.com"}, 3},
			{"domain with wildcard", SuppressionFilter{Domain: "example_com"}, 0},
			{"description", SuppressionFilter{Description: "CHANG"}, 1},
			{"to in the past", SuppressionFilter{To: time.Now().Add(-time.Hour)}, 0},
			{"from", SuppressionFilter{From: time.Now().Add(-time.Hour)}, 4},
		} {
			if _, n, err := e.s.ListSuppressions(ctx, tc.f); err != nil || n != tc.want {
				t.Errorf("%s: total %d, %v; want %d", tc.name, n, err, tc.want)
			}
		}
		got, err := e.s.SuppressionsFor(ctx, []int64{0, 3}, []string{"A@EXAMPLE.COM", "c@example.com", "none@x.org"})
		if err != nil || len(got) != 3 {
			t.Errorf("SuppressionsFor = %+v, %v; want 3 entries", got, err)
		}
		if got, err := e.s.SuppressionsFor(ctx, []int64{5}, []string{"a@example.com"}); err != nil || len(got) != 0 {
			t.Errorf("SuppressionsFor other account = %+v, %v", got, err)
		}
		// Quotes, backslashes and non-ASCII survive the lookup (SQLite
		// passes the list as JSON).
		odd := `"o'q\\x"@exämple.com`
		if err := e.s.UpsertSuppressions(ctx, []Suppression{{Recipient: odd, Type: SuppressTransactional, Source: SourceManual}}); err != nil {
			t.Fatal(err)
		}
		if got, err := e.s.SuppressionsFor(ctx, []int64{0}, []string{strings.ToUpper(odd)}); err != nil || len(got) != 1 || got[0].Recipient != strings.ToLower(odd) {
			t.Errorf("SuppressionsFor(%q) = %+v, %v; want its entry", odd, got, err)
		}
		if _, err := e.s.DeleteSuppressions(ctx, 0, odd, ""); err != nil {
			t.Fatal(err)
		}
		if n, err := e.s.DeleteSuppressions(ctx, 0, "A@example.com", SuppressTransactional); err != nil || n != 1 {
			t.Errorf("delete one type = %d, %v", n, err)
		}
		if n, err := e.s.DeleteSuppressions(ctx, 0, "a@example.com", ""); err != nil || n != 1 {
			t.Errorf("delete both types = %d, %v", n, err)
		}
		if n, err := e.s.DeleteSuppressions(ctx, 0, "a@example.com", ""); err != nil || n != 0 {
			t.Errorf("delete again = %d, %v", n, err)
		}
	})
}

func TestDomainUpdateAndStatus(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		d := &Domain{Name: "example.com", Selector: "s1", Algorithm: "rsa", PrivateKey: []byte("k"), PublicKey: "AAAA"}
		if err := e.s.CreateDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
		st, err := e.s.DomainStatus(ctx, "example.com")
		if err != nil || st != DomainStatusDefaults() {
			t.Errorf("status before verification = %+v, %v", st, err)
		}
		if _, err := e.s.DomainStatus(ctx, "nope.example"); !errors.Is(err, ErrNotFound) {
			t.Errorf("status of unknown domain: %v", err)
		}
		want := DomainStatus{OwnershipVerified: true, DKIMStatus: VerifyValid, SPFStatus: VerifyInvalid,
			SPFError: "no SPF record", VerifiedAt: time.Now().UTC().Truncate(time.Microsecond)}
		if err := e.s.SetDomainStatus(ctx, "example.com", want); err != nil {
			t.Fatal(err)
		}
		if err := e.s.SetDomainStatus(ctx, "nope.example", want); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetDomainStatus of unknown domain: %v", err)
		}
		if st, err := e.s.DomainStatus(ctx, "example.com"); err != nil || st != want {
			t.Errorf("status = %+v, %v; want %+v", st, err, want)
		}
		all, err := e.s.DomainStatuses(ctx)
		if err != nil || len(all) != 1 || all["example.com"] != want {
			t.Errorf("DomainStatuses = %+v, %v", all, err)
		}
		d.Shared = true
		if err := e.s.UpdateDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
		if st, _ := e.s.DomainStatus(ctx, "example.com"); st != want {
			t.Errorf("status reset by an update that kept the selector: %+v", st)
		}
		d.Selector = "s2"
		if err := e.s.UpdateDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
		got, _ := e.s.GetDomain(ctx, "example.com")
		if !got.Shared || got.Selector != "s2" {
			t.Errorf("after update: %+v", got)
		}
		if st, _ := e.s.DomainStatus(ctx, "example.com"); st != DomainStatusDefaults() {
			t.Errorf("status after a selector change = %+v; want never verified", st)
		}
		if err := e.s.UpdateDomain(ctx, &Domain{Name: "nope.example"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("UpdateDomain of unknown domain: %v", err)
		}
		if err := e.s.SetDomainStatus(ctx, "example.com", want); err != nil {
			t.Fatal(err)
		}
		if err := e.s.DeleteDomain(ctx, "example.com"); err != nil {
			t.Fatal(err)
		}
		if all, err := e.s.DomainStatuses(ctx); err != nil || len(all) != 0 {
			t.Errorf("status kept after delete: %+v, %v", all, err)
		}
	})
}

// TestSuppressionsDigest: the digest changes when an entry is added,
// updated or deleted, and not otherwise; AllSuppressions returns every
// account's entries with the same digest, or none past its max.
func TestSuppressionsDigest(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		digest := func() SuppressionDigest {
			t.Helper()
			d, err := e.s.SuppressionsDigest(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		empty := digest()
		if empty != (SuppressionDigest{}) {
			t.Errorf("digest of no entries = %+v, want zero", empty)
		}
		in := []Suppression{
			{Recipient: "a@example.com", Type: SuppressTransactional, Source: SourceManual},
			{Subaccount: 4, Recipient: "b@example.com", Type: SuppressNonTransactional, Source: SourceBounce},
		}
		if err := e.s.UpsertSuppressions(ctx, in); err != nil {
			t.Fatal(err)
		}
		added := digest()
		if added == empty || added.Count != 2 || digest() != added {
			t.Errorf("after adding 2: %+v (before %+v), want a new, stable digest counting 2", added, empty)
		}
		all, d, err := e.s.AllSuppressions(ctx, 2)
		if err != nil || d != added || len(all) != 2 {
			t.Fatalf("AllSuppressions(2) = %+v, %+v, %v; want both entries and %+v", all, d, err, added)
		}
		for _, x := range all {
			if !(x.Subaccount == 0 && x.Recipient == "a@example.com" && x.Type == SuppressTransactional ||
				x.Subaccount == 4 && x.Recipient == "b@example.com" && x.Type == SuppressNonTransactional) {
				t.Errorf("AllSuppressions entry %+v", x)
			}
		}
		if all, d, err := e.s.AllSuppressions(ctx, 1); err != nil || len(all) != 0 || d != added {
			t.Errorf("AllSuppressions(1) = %+v, %+v, %v; want no entries and %+v", all, d, err, added)
		}
		time.Sleep(2 * time.Millisecond) // a later UpdatedAt
		in[0].Description = "updated"
		if err := e.s.UpsertSuppressions(ctx, in[:1]); err != nil {
			t.Fatal(err)
		}
		updated := digest()
		if updated == added || updated.Count != 2 {
			t.Errorf("after an update: %+v, want a new digest counting 2 (was %+v)", updated, added)
		}
		if _, err := e.s.DeleteSuppressions(ctx, 4, "b@example.com", ""); err != nil {
			t.Fatal(err)
		}
		if deleted := digest(); deleted == updated || deleted.Count != 1 {
			t.Errorf("after a delete: %+v, want a new digest counting 1 (was %+v)", deleted, updated)
		}
	})
}
