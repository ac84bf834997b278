package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

// auditPage is the answer of GET /api/v1/audit.
type auditPage struct {
	Results []AuditEntry      `json:"results"`
	Links   map[string]string `json:"links"`
}

func (f *fixture) audit(key, path string, header map[string]string) (auditPage, string) {
	f.t.Helper()
	b := f.must(req{method: "GET", path: path, key: key, header: header}, http.StatusOK, nil)
	var p auditPage
	if err := json.Unmarshal(b, &p); err != nil {
		f.t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
	return p, string(b)
}

func TestAuditLog(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			st := audit.Wrap(storetest.Open(t, backend), nil)
			f := setupStore(t, st, auth.Config{CacheTTL: time.Hour}, Config{})
			sub := f.storeKey(5, auth.GrantAPIKeysManage, auth.GrantDomainsManage)
			inject := f.storeKey(0, auth.GrantSMTPInject)

			var created Key
			f.must(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: `{"label": "app", "grants": ["smtp/inject"]}`}, http.StatusOK, &created)
			f.must(req{method: "PUT", path: "/api/v1/api-keys/" + created.ID, key: f.admin,
				body: `{"label": "app2"}`}, http.StatusOK, nil)
			f.must(req{method: "POST", path: "/api/v1/sending-domains", key: sub,
				body: `{"domain": "sub.example", "dkim_algorithm": "ed25519"}`}, http.StatusOK, nil)
			f.must(req{method: "DELETE", path: "/api/v1/api-keys/" + created.ID, key: f.admin}, http.StatusNoContent, nil)

			p, body := f.audit(f.admin, "/api/v1/audit", nil)
			// The fixture's setup (keys, subaccount 5; made without an
			// actor), then the four changes of this test.
			total := len(p.Results)
			if total < 4 || p.Links["next"] != "" {
				t.Fatalf("master sees %d entries (next %q), want the fixture's and 4 more, no next page:\n%s", total, p.Links["next"], body)
			}
			for _, e := range p.Results[4:] {
				if e.Actor.Via != "unknown" {
					t.Errorf("setup entry %+v, want via unknown", e)
				}
			}
			del, dom, upd, crt := p.Results[0], p.Results[1], p.Results[2], p.Results[3]
			if del.Action != "delete" || upd.Action != "update" || crt.Action != "create" || crt.ObjectID != created.ID ||
				dom.ObjectType != "sending_domain" || dom.ObjectID != "sub.example" || dom.Subaccount != 5 {
				t.Fatalf("entries out of order or wrong:\n%s", body)
			}
			for _, e := range []AuditEntry{del, upd, crt} {
				if e.Actor.Via != "api" || e.Actor.KeyID == "" || e.Actor.ShortKey != f.admin[:4] || e.Actor.IP != "127.0.0.1" {
					t.Errorf("actor of %s = %+v, want the admin key from 127.0.0.1", e.Action, e.Actor)
				}
			}
			if !strings.Contains(string(upd.Before), `"label":"app"`) || !strings.Contains(string(upd.After), `"label":"app2"`) {
				t.Errorf("update before %s after %s", upd.Before, upd.After)
			}
			for _, secret := range []string{created.Key, f.admin, sub, "PRIVATE KEY"} {
				if strings.Contains(body, secret) {
					t.Errorf("the audit log shows a secret %q:\n%s", secret, body)
				}
			}

			// A subaccount's caller sees its subaccount's entries only;
			// a master key scoped with X-MSYS-SUBACCOUNT too.
			for _, c := range []struct {
				key    string
				header map[string]string
			}{{sub, nil}, {f.admin, map[string]string{"X-MSYS-SUBACCOUNT": "5"}}} {
				p, body := f.audit(c.key, "/api/v1/audit", c.header)
				if len(p.Results) < 2 || p.Results[0].ObjectID != "sub.example" {
					t.Errorf("subaccount 5 sees:\n%s\nwant the domain first, and its own key's creation", body)
				}
				for _, e := range p.Results {
					if e.Subaccount != 5 {
						t.Errorf("subaccount 5 sees an entry of %d", e.Subaccount)
					}
				}
			}

			// Pages follow links.next.
			var seen []int64
			path := "/api/v1/audit?per_page=3"
			for range total {
				p, _ := f.audit(f.admin, path, nil)
				for _, e := range p.Results {
					seen = append(seen, e.ID)
				}
				if p.Links["next"] == "" {
					break
				}
				path = p.Links["next"]
			}
			if len(seen) != total || seen[0] != del.ID {
				t.Errorf("pages gave ids %v, want the %d entries once, newest first", seen, total)
			}
			p, _ = f.audit(f.admin, "/api/v1/audit?from="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339), nil)
			if len(p.Results) != 0 {
				t.Errorf("from the future: %d entries", len(p.Results))
			}

			f.fails(req{method: "GET", path: "/api/v1/audit?cursor=xyz", key: f.admin}, http.StatusBadRequest, "cursor")
			f.fails(req{method: "GET", path: "/api/v1/audit?per_page=0", key: f.admin}, http.StatusBadRequest, "per_page")
			f.fails(req{method: "GET", path: "/api/v1/audit", key: inject}, http.StatusForbidden, "api_keys/manage")
		})
	}
}
