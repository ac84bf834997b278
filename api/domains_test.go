package api

import (
	"context"
	"encoding/base64"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/internal/storetest"
)

func TestSendingDomains(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{DKIMSelector: "gw2026"})
			post := func(body string) req {
				return req{method: "POST", path: "/api/v1/sending-domains", key: f.admin, body: body}
			}

			// Default: RSA with the configured selector.
			var d Domain
			f.must(post(`{"domain": "Example.COM."}`), http.StatusOK, &d)
			if d.Domain != "example.com" || d.Selector != "gw2026" || d.Algorithm != "rsa" || d.Shared || d.Subaccount != 0 {
				t.Errorf("created = %+v", d)
			}
			if d.DNSName != "gw2026._domainkey.example.com" || !strings.HasPrefix(d.DNSValue, "v=DKIM1; k=rsa; p=") ||
				d.DNSValue != "v=DKIM1; k=rsa; p="+d.DKIM.Public || d.DKIM.Selector != "gw2026" || d.DKIM.SigningDomain != "example.com" {
				t.Errorf("DNS record = %q %q, dkim = %+v", d.DNSName, d.DNSValue, d.DKIM)
			}
			if _, err := base64.StdEncoding.DecodeString(d.DKIM.Public); err != nil {
				t.Errorf("public key is not base64: %v", err)
			}
			// The private key was stored, never shown.
			stored, err := f.st.GetDomain(context.Background(), "example.com")
			if err != nil || !strings.Contains(string(stored.PrivateKey), "PRIVATE KEY") || stored.PublicKey != d.DKIM.Public {
				t.Fatalf("stored domain: %v %+v", err, stored)
			}

			var e Domain
			f.must(post(`{"domain": "mail.example.org", "dkim_algorithm": "ed25519", "dkim_selector": "s1", "shared_with_subaccounts": true}`),
				http.StatusOK, &e)
			if e.DNSName != "s1._domainkey.mail.example.org" || !strings.HasPrefix(e.DNSValue, "v=DKIM1; k=ed25519; p=") || !e.Shared {
				t.Errorf("ed25519 domain = %+v", e)
			}

			var list []Domain
			f.must(req{method: "GET", path: "/api/v1/sending-domains", key: f.admin}, http.StatusOK, &list)
			if len(list) != 2 {
				t.Errorf("list = %+v, want 2 domains", list)
			}
			var got Domain
			f.must(req{method: "GET", path: "/api/v1/sending-domains/EXAMPLE.com", key: f.admin}, http.StatusOK, &got)
			if !reflect.DeepEqual(got, d) || got.Status == nil || got.Status.DKIMStatus != "unverified" {
				t.Errorf("GET = %+v, want %+v", got, d)
			}

			f.fails(post(`{"domain": "example.com"}`), http.StatusConflict, "already")
			f.fails(post(`{}`), http.StatusUnprocessableEntity, "domain is required")
			f.fails(post(`{"domain": "localhost"}`), http.StatusUnprocessableEntity, "not a domain name")
			f.fails(post(`{"domain": "bücher.example"}`), http.StatusUnprocessableEntity, "punycode")
			f.fails(post(`{"domain": "x.example", "dkim_algorithm": "dsa"}`), http.StatusUnprocessableEntity, "rsa or ed25519")
			f.fails(post(`{"domain": "x.example", "dkim_selector": "a.b"}`), http.StatusUnprocessableEntity, "dkim_selector")
			f.fails(post(`{"domain": "x.example", "dkim": {"private": "MII...", "selector": "s"}}`), http.StatusUnprocessableEntity, "generates")
			f.fails(post(`{"domain": 5}`), http.StatusBadRequest, "domain", "a string")

			code, body := f.do(req{method: "DELETE", path: "/api/v1/sending-domains/example.com", key: f.admin})
			if code != http.StatusNoContent || len(body) != 0 {
				t.Fatalf("DELETE: %d %s, want 204", code, body)
			}
			f.fails(req{method: "GET", path: "/api/v1/sending-domains/example.com", key: f.admin}, http.StatusNotFound, "example.com")
			f.fails(req{method: "DELETE", path: "/api/v1/sending-domains/example.com", key: f.admin}, http.StatusNotFound, "example.com")
			f.fails(req{method: "GET", path: "/api/v1/sending-domains/not_a_domain", key: f.admin}, http.StatusNotFound)
			f.must(req{method: "GET", path: "/api/v1/sending-domains", key: f.admin}, http.StatusOK, &list)
			if len(list) != 1 || list[0].Domain != "mail.example.org" {
				t.Errorf("after delete, list = %+v", list)
			}
		})
	}
}
