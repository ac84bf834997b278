package audit_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestSubaccountsSuppressionsWebhooksLimitsRecorded: the other
// administered objects are recorded through the wrapped store, and a
// webhook's secret, credentials and header values never are.
func TestSubaccountsSuppressionsWebhooksLimitsRecorded(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, raw store.Store) {
		st := audit.Wrap(raw, nil)
		ctx := audit.WithActor(context.Background(), audit.CLIActor())

		sa := &store.Subaccount{Name: "shop", Status: store.SubaccountActive}
		if err := st.CreateSubaccount(ctx, sa); err != nil {
			t.Fatal(err)
		}
		sa.Status = store.SubaccountSuspended
		if _, err := st.UpdateSubaccount(ctx, sa); err != nil {
			t.Fatal(err)
		}
		if err := st.SetLimits(ctx, store.LimitScope{Kind: store.LimitKindSubaccount, ID: "1"}, store.Limits{PerHour: 100}); err != nil {
			t.Fatal(err)
		}
		entries := []store.Suppression{{Subaccount: sa.ID, Recipient: "Bob@Example.com", Type: store.SuppressTransactional,
			Source: store.SourceManual, Description: "asked"}}
		for i := range entries {
			entries[i].Recipient = strings.ToLower(entries[i].Recipient)
		}
		if err := st.UpsertSuppressions(ctx, entries); err != nil {
			t.Fatal(err)
		}
		if n, err := st.DeleteSuppressions(ctx, sa.ID, "bob@example.com", ""); err != nil || n != 1 {
			t.Fatalf("delete suppression: %d %v", n, err)
		}
		w := &store.Webhook{ID: strings.Repeat("ab", 16), Name: "hook", Target: "https://user:hunter2@hooks.example/x",
			Events: []string{"bounce"}, Active: true, AuthType: "basic",
			Auth:    json.RawMessage(`{"username":"u","password":"CREDPASS"}`),
			Headers: json.RawMessage(`{"X-Token":"HEADERVALUE"}`), Secret: "SIGNINGSECRET"}
		if err := st.CreateWebhook(ctx, w); err != nil {
			t.Fatal(err)
		}
		w.Name = "hook2"
		if err := st.UpdateWebhook(ctx, w); err != nil {
			t.Fatal(err)
		}
		if err := st.DeleteWebhook(ctx, w.ID); err != nil {
			t.Fatal(err)
		}

		es, all := rows(t, raw)
		var got []string
		for _, e := range es {
			got = append(got, e.Action+" "+e.ObjectType+" "+e.ObjectID)
		}
		want := []string{"create subaccount 1", "update subaccount 1", "update subaccount 1",
			"update suppression bob@example.com", "delete suppression bob@example.com",
			"create webhook " + w.ID, "update webhook " + w.ID, "delete webhook " + w.ID}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		for _, e := range es[:5] {
			if e.Subaccount != sa.ID {
				t.Errorf("%s %s recorded for subaccount %d, want %d", e.Action, e.ObjectType, e.Subaccount, sa.ID)
			}
		}
		if !strings.Contains(string(es[1].Before), `"active"`) || !strings.Contains(string(es[1].After), `"suspended"`) {
			t.Errorf("status change before %s after %s", es[1].Before, es[1].After)
		}
		if !strings.Contains(strings.ReplaceAll(string(es[2].After), " ", ""), `"per_hour":100`) {
			t.Errorf("limits entry after %s", es[2].After)
		}
		if !strings.Contains(string(es[4].Before), `"asked"`) {
			t.Errorf("suppression delete before %s", es[4].Before)
		}
		if !strings.Contains(string(es[5].After), `"X-Token"`) {
			t.Errorf("webhook view lacks its header names: %s", es[5].After)
		}
		for _, secret := range []string{"SIGNINGSECRET", "CREDPASS", "HEADERVALUE", "hunter2"} {
			if strings.Contains(all, secret) {
				t.Errorf("the audit log holds a webhook secret %q:\n%s", secret, all)
			}
		}
	})
}
