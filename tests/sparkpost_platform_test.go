package tests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/dnstest"
)

// TestSparkPostClientSubaccounts: subaccounts.create with setup_api_key
// answers SparkPost's shape with the key once, list/get show it, update
// suspends it, and the suspended subaccount's key is refused at SMTP AUTH.
func TestSparkPostClientSubaccounts(t *testing.T) {
	t.Parallel()
	needNodeClient(t)
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend})
			logsOnFailure(t, g)
			key := g.CreateKey("--grant", "subaccounts/manage")
			var res struct {
				Created struct {
					ID       int64  `json:"subaccount_id"`
					Key      string `json:"key"`
					Label    string `json:"label"`
					ShortKey string `json:"short_key"`
				} `json:"created"`
				Listed []struct {
					ID     int64  `json:"id"`
					Name   string `json:"name"`
					Status string `json:"status"`
				} `json:"listed"`
				Got struct {
					Name   string `json:"name"`
					Status string `json:"status"`
				} `json:"got"`
				Updated map[string]string `json:"updated"`
				After   struct {
					Name   string `json:"name"`
					Status string `json:"status"`
				} `json:"after"`
			}
			g.MustSparkPost(key, "subaccounts", map[string]any{"name": "Acme", "key_label": "Acme SMTP",
				"key_grants": []string{"smtp/inject"}}, &res)
			c := res.Created
			if c.ID != 1 || len(c.Key) != 40 || c.Label != "Acme SMTP" || c.ShortKey != c.Key[:4] {
				t.Errorf("create answered %+v", c)
			}
			if len(res.Listed) != 1 || res.Listed[0].Name != "Acme" || res.Listed[0].Status != "active" ||
				res.Got.Name != "Acme" || res.Updated["message"] == "" {
				t.Errorf("list/get/update: %+v", res)
			}
			if res.After.Name != "Acme (renamed)" || res.After.Status != "suspended" {
				t.Errorf("after update: %+v", res.After)
			}
			// The suspended subaccount's key is refused at AUTH (the API
			// evicted its cache entry: at once on this node).
			if err := tryAuth(g, c.Key); err == nil || !strings.Contains(err.Error(), "535") {
				t.Errorf("AUTH with the suspended subaccount's key: %v, want 535", err)
			}
			// A subaccount's key may not manage subaccounts.
			r, err := g.SparkPost(c.Key, "subaccounts", map[string]any{"name": "x", "key_label": "k", "key_grants": []string{"smtp/inject"}})
			if err != nil {
				t.Fatal(err)
			}
			if r.OK || (r.Status != 401 && r.Status != 403) {
				t.Errorf("a subaccount's key creating subaccounts: %+v", r)
			}
		})
	}
}

// TestSparkPostClientSuppressionList: upsert, list paged with the next
// link, get and delete through SparkPost's Node client.
func TestSparkPostClientSuppressionList(t *testing.T) {
	t.Parallel()
	needNodeClient(t)
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend})
			logsOnFailure(t, g)
			key := g.CreateKey("--grant", "suppression_lists/manage", "--grant", "smtp/inject")
			var entries []map[string]string
			for i := range 5 {
				entries = append(entries, map[string]string{"recipient": fmt.Sprintf("u%d@example.net", i),
					"type": "non_transactional", "description": "unsubscribed"})
			}
			entries = append(entries, map[string]string{"recipient": "u0@example.net", "type": "transactional"})
			var res struct {
				UpsertMessage string `json:"upsert_message"`
				Pages         []struct {
					TotalCount int64    `json:"total_count"`
					Recipients []string `json:"recipients"`
				} `json:"pages"`
				Got []struct {
					Recipient, Type, Source, Description string
				} `json:"got"`
				AfterDeleteStatus int `json:"after_delete_status"`
			}
			g.MustSparkPost(key, "suppression", map[string]any{"entries": entries, "per_page": 2,
				"get": "u0@example.net", "delete": "u1@example.net"}, &res)
			if res.UpsertMessage == "" || len(res.Pages) != 3 {
				t.Fatalf("upsert and pages: %+v", res)
			}
			var all []string
			for _, p := range res.Pages {
				if p.TotalCount != 6 {
					t.Errorf("total_count %d, want 6", p.TotalCount)
				}
				all = append(all, p.Recipients...)
			}
			if len(all) != 6 || all[0] != "u0@example.net/non_transactional" || all[1] != "u0@example.net/transactional" {
				t.Errorf("pages gave %v", all)
			}
			if len(res.Got) != 2 || res.Got[0].Source != "Manually Added" || res.Got[0].Description != "unsubscribed" {
				t.Errorf("get: %+v", res.Got)
			}
			if res.AfterDeleteStatus != 404 {
				t.Errorf("get after delete: %d, want 404", res.AfterDeleteStatus)
			}
			// u0 is suppressed for both types: refused at RCPT.
			if err := tryRcpt(g, key, "u0@example.net"); err == nil || !strings.Contains(err.Error(), "550") {
				t.Errorf("RCPT to a suppressed recipient: %v, want 550 5.7.1", err)
			}
		})
	}
}

// TestSparkPostClientSendingDomains: sendingDomains.update and verify
// (against a DNS server on loopback, the gateway's relay.dns_resolver).
func TestSparkPostClientSendingDomains(t *testing.T) {
	t.Parallel()
	needNodeClient(t)
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			dns := dnstest.New(t, `example.com. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"`)
			g := StartGateway(t, Options{Backend: backend, TOML: fmt.Sprintf("\n[relay]\ndns_resolver = %q\n", dns.Addr())})
			logsOnFailure(t, g)
			key := g.CreateKey("--grant", "sending_domains/manage")
			var rec struct{ Name, Value string }
			g.MustSparkPost(key, "sending_domains", map[string]any{"domain": "example.com", "create": true}, &rec)
			dns.Add(dnstest.TXT(rec.Name, rec.Value))
			var res struct {
				Updated  map[string]string `json:"updated"`
				Verified struct {
					OwnershipVerified bool   `json:"ownership_verified"`
					DKIMStatus        string `json:"dkim_status"`
					SPFStatus         string `json:"spf_status"`
					ComplianceStatus  string `json:"compliance_status"`
				} `json:"verified"`
				Got struct {
					Shared bool `json:"shared"`
					Status struct {
						OwnershipVerified bool   `json:"ownership_verified"`
						DKIMStatus        string `json:"dkim_status"`
					} `json:"status"`
				} `json:"got"`
				ListedStatus []struct {
					DKIMStatus string `json:"dkim_status"`
				} `json:"listed_status"`
			}
			g.MustSparkPost(key, "sending_domains", map[string]any{"domain": "example.com",
				"update": map[string]any{"shared_with_subaccounts": true},
				"verify": map[string]any{"dkim_verify": true, "spf_verify": true}}, &res)
			v := res.Verified
			if res.Updated["domain"] != "example.com" || !v.OwnershipVerified || v.DKIMStatus != "valid" || v.SPFStatus != "valid" || v.ComplianceStatus != "valid" {
				t.Errorf("update and verify: %+v", res)
			}
			if !res.Got.Shared || !res.Got.Status.OwnershipVerified || len(res.ListedStatus) != 1 || res.ListedStatus[0].DKIMStatus != "valid" {
				t.Errorf("get and list after verify: %+v", res)
			}
		})
	}
}

// tryAuth dials the gateway and authenticates with key.
func tryAuth(g *Gateway, key string) error {
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key))
}

// tryRcpt authenticates with key and returns the reply to RCPT TO:<rcpt>.
func tryRcpt(g *Gateway, key, rcpt string) error {
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		return err
	}
	if err := c.Mail("app@example.com", nil); err != nil {
		return err
	}
	return c.Rcpt(rcpt, nil)
}
