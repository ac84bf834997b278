package audit_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// rows returns every audit entry, oldest first, and all of them encoded
// as one JSON text to grep.
func rows(t *testing.T, st store.Store) ([]store.AuditEntry, string) {
	t.Helper()
	es, err := st.ListAudit(context.Background(), store.AuditFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := 0, len(es)-1; i < j; i, j = i+1, j-1 {
		es[i], es[j] = es[j], es[i]
	}
	b, err := json.Marshal(es)
	if err != nil {
		t.Fatal(err)
	}
	return es, string(b)
}

func TestKeysAndDomainsRecorded(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, raw store.Store) {
		var logBuf bytes.Buffer
		st := audit.Wrap(raw, slog.New(slog.NewTextHandler(&logBuf, nil)))
		m := auth.NewManager(st, nil)
		actor := audit.Actor{Via: audit.ViaAPI, KeyID: "0123456789abcdef", ShortKey: "ab12", IP: "192.0.2.7"}
		ctx := audit.WithActor(context.Background(), actor)

		if err := raw.CreateSubaccount(ctx, &store.Subaccount{ID: 4, Name: "tenant"}); err != nil {
			t.Fatal(err)
		}
		key, k, err := m.Create(ctx, auth.CreateParams{Label: "app", Grants: []string{"smtp/inject"}, Subaccount: 4,
			AllowedIPs: []string{"10.0.0.0/8"}})
		if err != nil {
			t.Fatal(err)
		}
		label := "renamed"
		if _, err := m.Update(ctx, k.ID, auth.UpdateParams{Label: &label}); err != nil {
			t.Fatal(err)
		}
		if err := m.Delete(audit.WithActor(context.Background(), audit.CLIActor()), k.ID); err != nil {
			t.Fatal(err)
		}
		// A failed change records nothing.
		if err := m.Delete(ctx, k.ID); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second delete: %v", err)
		}
		d := &store.Domain{Name: "example.com", Selector: "s1", Algorithm: "rsa",
			PrivateKey: []byte("-----BEGIN PRIVATE KEY-----\nSECRETDKIM\n-----END PRIVATE KEY-----\n"), PublicKey: "PUBKEY"}
		if err := st.CreateDomain(context.Background(), d); err != nil { // no actor
			t.Fatal(err)
		}
		if err := st.DeleteDomain(ctx, "Example.COM"); err != nil {
			t.Fatal(err)
		}

		es, all := rows(t, raw)
		type want struct{ action, typ, id, via string }
		wants := []want{
			{"create", "api_key", k.ID, "api"},
			{"update", "api_key", k.ID, "api"},
			{"delete", "api_key", k.ID, "cli"},
			{"create", "sending_domain", "example.com", "unknown"},
			{"delete", "sending_domain", "example.com", "api"},
		}
		if len(es) != len(wants) {
			t.Fatalf("got %d entries, want %d: %s", len(es), len(wants), all)
		}
		for i, w := range wants {
			e := es[i]
			if e.Action != w.action || e.ObjectType != w.typ || e.ObjectID != w.id || e.Actor.Via != w.via {
				t.Errorf("entry %d = %s %s %s via %s, want %+v", i, e.Action, e.ObjectType, e.ObjectID, e.Actor.Via, w)
			}
		}
		if es[0].Actor != actor || es[0].Subaccount != 4 {
			t.Errorf("create entry actor %+v subaccount %d, want %+v and 4", es[0].Actor, es[0].Subaccount, actor)
		}
		if cli := es[2].Actor; cli.User == "" || cli.Host == "" || cli.KeyID != "" {
			t.Errorf("CLI actor = %+v, want the OS user and host and no key", cli)
		}
		var before, after audit.Key
		if err := json.Unmarshal(es[1].Before, &before); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(es[1].After, &after); err != nil {
			t.Fatal(err)
		}
		if before.Label != "app" || after.Label != "renamed" || after.AllowedIPs[0] != "10.0.0.0/8" {
			t.Errorf("update before %+v after %+v", before, after)
		}
		if es[0].Before != nil || es[2].After != nil {
			t.Errorf("a creation has no before, a deletion no after: %s %s", es[0].Before, es[2].After)
		}

		// Never a key, its hash or a DKIM private key.
		hash := auth.HashKey(key)
		for _, secret := range []string{key, hex.EncodeToString(hash), string(hash), "SECRETDKIM", "PRIVATE KEY"} {
			if strings.Contains(all, secret) || strings.Contains(logBuf.String(), secret) {
				t.Errorf("audit rows or log hold a secret %q: %s", secret, all)
			}
		}
		// The hash as the base64 encoding/json would give a []byte.
		b64, _ := json.Marshal(hash)
		if strings.Contains(all, strings.Trim(string(b64), `"`)) {
			t.Errorf("audit rows hold the key hash")
		}
		if logBuf.Len() != 0 {
			t.Errorf("unexpected log: %s", logBuf.String())
		}
	})
}

func TestListPages(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, raw store.Store) {
		st := audit.Wrap(raw, nil)
		ctx := audit.WithActor(context.Background(), audit.CLIActor())
		for i := range 5 {
			sub := int64(i % 2)
			d := &store.Domain{Name: "d" + string(rune('a'+i)) + ".example", Subaccount: sub, PrivateKey: []byte("x")}
			if err := st.CreateDomain(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		var ids []string
		f := audit.Filter{Limit: 2}
		for pages := 0; ; pages++ {
			if pages > 3 {
				t.Fatal("too many pages")
			}
			p, err := audit.List(ctx, raw, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range p.Entries {
				ids = append(ids, e.ObjectID)
			}
			if p.Next == "" {
				break
			}
			f.Cursor = p.Next
		}
		if got := strings.Join(ids, ","); got != "de.example,dd.example,dc.example,db.example,da.example" {
			t.Errorf("pages gave %s, want every entry once, newest first", got)
		}
		one := int64(1)
		p, err := audit.List(ctx, raw, audit.Filter{Subaccount: &one})
		if err != nil || len(p.Entries) != 2 || p.Next != "" {
			t.Errorf("subaccount 1: %+v %v", p, err)
		}
		p, err = audit.List(ctx, raw, audit.Filter{Since: time.Now().Add(time.Hour)})
		if err != nil || len(p.Entries) != 0 {
			t.Errorf("since the future: %+v %v", p, err)
		}
		if _, err := audit.List(ctx, raw, audit.Filter{Cursor: "bogus"}); !errors.Is(err, audit.ErrBadCursor) {
			t.Errorf("bad cursor: %v", err)
		}
	})
}
