package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/dnstest"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

func TestSendingDomainUpdateAndVerify(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			dns := dnstest.New(t, `example.com. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`)
			f := setup(t, backend, Config{DNSResolver: dns.Addr()})
			var d Domain
			f.must(req{method: "POST", path: "/api/v1/sending-domains", key: f.admin,
				body: `{"domain": "example.com", "dkim_algorithm": "ed25519"}`}, http.StatusOK, &d)
			if d.Status == nil || d.Status.OwnershipVerified || d.Status.DKIMStatus != "unverified" || d.Status.ComplianceStatus != "valid" {
				t.Fatalf("new domain's status %+v", d.Status)
			}
			path := "/api/v1/sending-domains/example.com"

			// Not published yet: invalid, with the reason.
			var v struct {
				DomainStatus
				DNS map[string]string `json:"dns"`
			}
			f.must(req{method: "POST", path: path + "/verify", key: f.admin, body: `{"dkim_verify": true, "spf_verify": true}`}, http.StatusOK, &v)
			if v.OwnershipVerified || v.DKIMStatus != "invalid" || !strings.Contains(v.DNS["dkim_error"], "no TXT record") ||
				v.SPFStatus != "valid" || v.DNS["spf_record"] != "v=spf1 ip4:192.0.2.1 -all" {
				t.Errorf("before publishing: %+v", v)
			}
			// Published: valid.
			dns.Add(dnstest.TXT(d.DNSName, d.DNSValue))
			f.must(req{method: "POST", path: path + "/verify", key: f.admin, body: `{"dkim_verify": true}`}, http.StatusOK, &v)
			if !v.OwnershipVerified || v.DKIMStatus != "valid" || v.VerifiedAt == "" {
				t.Errorf("after publishing: %+v", v)
			}
			var got Domain
			f.must(req{method: "GET", path: path, key: f.admin}, http.StatusOK, &got)
			if got.Status == nil || !got.Status.OwnershipVerified || got.Status.SPFStatus != "valid" {
				t.Errorf("GET status %+v", got.Status)
			}
			var list []Domain
			f.must(req{method: "GET", path: "/api/v1/sending-domains", key: f.admin}, http.StatusOK, &list)
			if len(list) != 1 || list[0].Status == nil || list[0].Status.DKIMStatus != "valid" {
				t.Errorf("list %+v", list)
			}

			// Update: shared, then a new selector (which resets the DKIM check).
			var msg map[string]string
			f.must(req{method: "PUT", path: path, key: f.admin, body: `{"shared_with_subaccounts": true}`}, http.StatusOK, &msg)
			if msg["domain"] != "example.com" {
				t.Errorf("update answer %v", msg)
			}
			f.must(req{method: "PUT", path: path, key: f.admin, body: `{"dkim": {"selector": "s2026"}}`}, http.StatusOK, nil)
			f.must(req{method: "GET", path: path, key: f.admin}, http.StatusOK, &got)
			if !got.Shared || got.Selector != "s2026" || got.DNSName != "s2026._domainkey.example.com" || got.Status.OwnershipVerified {
				t.Errorf("after updates: %+v %+v", got, got.Status)
			}
			f.fails(req{method: "PUT", path: path, key: f.admin, body: `{}`}, http.StatusUnprocessableEntity, "nothing to change")
			f.fails(req{method: "PUT", path: path, key: f.admin, body: `{"dkim_selector": "a.b"}`}, http.StatusUnprocessableEntity, "dkim_selector")
			f.fails(req{method: "PUT", path: path, key: f.admin, body: `{"dkim": {"private": "MII"}}`}, http.StatusUnprocessableEntity, "dkim:")
			f.fails(req{method: "POST", path: path + "/verify", key: f.admin, body: `{"dkim_verify": false}`}, http.StatusUnprocessableEntity, "nothing to verify")
			f.fails(req{method: "PUT", path: "/api/v1/sending-domains/none.example", key: f.admin, body: `{"shared_with_subaccounts": true}`}, http.StatusNotFound)
			f.fails(req{method: "POST", path: "/api/v1/sending-domains/none.example/verify", key: f.admin}, http.StatusNotFound)
			// A subaccount's domain cannot be shared; another subaccount does not see it.
			f.must(req{method: "POST", path: "/api/v1/sending-domains", key: f.admin, header: map[string]string{subaccountHeader: "4"},
				body: `{"domain": "sub.example", "dkim_algorithm": "ed25519"}`}, http.StatusOK, nil)
			f.fails(req{method: "PUT", path: "/api/v1/sending-domains/sub.example", key: f.admin, body: `{"shared_with_subaccounts": true}`},
				http.StatusUnprocessableEntity, "master-account domain")
			other := f.storeKey(5, auth.GrantDomainsManage)
			f.fails(req{method: "POST", path: "/api/v1/sending-domains/sub.example/verify", key: other}, http.StatusNotFound)
		})
	}
}
