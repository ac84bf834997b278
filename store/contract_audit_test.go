package store

import (
	"encoding/json"
	"testing"
	"time"
)

func TestAudit(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		old := time.Now().Add(-48 * time.Hour)
		entries := []*AuditEntry{
			{Time: old, Action: "create", ObjectType: "api_key", ObjectID: "k1",
				After: json.RawMessage(`{"label":"old"}`), Actor: AuditActor{Via: "cli", User: "root", Host: "h1"}},
			{Action: "update", ObjectType: "api_key", ObjectID: "k1", Subaccount: 3,
				Before: json.RawMessage(`{"label":"a"}`), After: json.RawMessage(`{"label":"b"}`),
				Actor: AuditActor{Via: "api", KeyID: "k0", ShortKey: "abcd", IP: "127.0.0.1"}},
			{Action: "delete", ObjectType: "sending_domain", ObjectID: "example.com",
				Before: json.RawMessage(`{"name":"example.com"}`), Actor: AuditActor{Via: "console", KeyID: "k0"}},
		}
		for _, en := range entries {
			if err := e.s.AddAudit(ctx, en); err != nil {
				t.Fatalf("add audit: %v", err)
			}
			if en.ID == 0 || en.Time.IsZero() {
				t.Fatalf("AddAudit did not set ID and Time: %+v", en)
			}
		}
		if !(entries[0].ID < entries[1].ID && entries[1].ID < entries[2].ID) {
			t.Fatalf("ids do not increase: %d %d %d", entries[0].ID, entries[1].ID, entries[2].ID)
		}

		all, err := e.s.ListAudit(ctx, AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != 3 || all[0].ID != entries[2].ID || all[2].ID != entries[0].ID {
			t.Fatalf("list: want 3 newest first, got %+v", all)
		}
		got := all[1]
		if got.Action != "update" || got.ObjectType != "api_key" || got.ObjectID != "k1" || got.Subaccount != 3 ||
			got.Actor != entries[1].Actor || !got.Time.Equal(entries[1].Time) {
			t.Errorf("round trip: got %+v, want %+v", got, *entries[1])
		}
		var before, after map[string]string
		if err := json.Unmarshal(got.Before, &before); err != nil || before["label"] != "a" {
			t.Errorf("before = %s (%v)", got.Before, err)
		}
		if err := json.Unmarshal(got.After, &after); err != nil || after["label"] != "b" {
			t.Errorf("after = %s (%v)", got.After, err)
		}
		if all[0].After != nil || all[2].Before != nil {
			t.Errorf("missing before/after must read back as nil: %s %s", all[0].After, all[2].Before)
		}

		// Filters and paging.
		sub := int64(3)
		if l, err := e.s.ListAudit(ctx, AuditFilter{Subaccount: &sub}); err != nil || len(l) != 1 || l[0].ID != entries[1].ID {
			t.Errorf("subaccount filter: %+v %v", l, err)
		}
		if l, err := e.s.ListAudit(ctx, AuditFilter{Since: time.Now().Add(-time.Hour)}); err != nil || len(l) != 2 {
			t.Errorf("since filter: %d entries, %v; want 2", len(l), err)
		}
		if l, err := e.s.ListAudit(ctx, AuditFilter{ObjectType: "api_key", ObjectID: "k1"}); err != nil || len(l) != 2 {
			t.Errorf("object filter: %d entries, %v; want 2", len(l), err)
		}
		p1, err := e.s.ListAudit(ctx, AuditFilter{Limit: 2})
		if err != nil || len(p1) != 2 {
			t.Fatalf("page 1: %d %v", len(p1), err)
		}
		p2, err := e.s.ListAudit(ctx, AuditFilter{Limit: 2, BeforeID: p1[1].ID})
		if err != nil || len(p2) != 1 || p2[0].ID != entries[0].ID {
			t.Fatalf("page 2: %+v %v", p2, err)
		}

		n, err := e.s.PruneAudit(ctx, time.Now().Add(-24*time.Hour))
		if err != nil || n != 1 {
			t.Fatalf("prune: %d %v; want 1", n, err)
		}
		if l, _ := e.s.ListAudit(ctx, AuditFilter{}); len(l) != 2 {
			t.Errorf("after prune: %d entries, want 2", len(l))
		}
	})
}
