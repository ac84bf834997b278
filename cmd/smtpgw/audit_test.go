package main

import (
	"encoding/json"
	"os"
	"os/user"
	"strings"
	"testing"
)

// TestAuditCLI: changes made with the CLI are in `smtpgw audit`, as the
// OS user's on this host, and the audit log never shows the key.
func TestAuditCLI(t *testing.T) {
	t.Parallel()
	for name, setup := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t)
			if out := c.must("audit"); !strings.Contains(out, "No audit entries") {
				t.Errorf("empty audit log printed:\n%s", out)
			}
			m := keyLine.FindStringSubmatch(c.must("keys", "create", "--label", "app", "--grant", "smtp/inject"))
			if m == nil {
				t.Fatal("create printed no key")
			}
			key := m[1]
			list := c.must("keys", "list", "--json")
			var keys struct {
				Results []struct{ ID string } `json:"results"`
			}
			if err := json.Unmarshal([]byte(list), &keys); err != nil || len(keys.Results) != 1 {
				t.Fatalf("keys list --json: %v\n%s", err, list)
			}
			id := keys.Results[0].ID
			c.must("keys", "update", id, "--label", "app2")
			c.must("domains", "add", "example.com", "--algorithm", "ed25519")
			c.must("keys", "delete", id)

			u, err := user.Current()
			if err != nil {
				t.Fatal(err)
			}
			host, _ := os.Hostname()
			text := c.must("audit")
			for _, want := range []string{"delete", "update", "create", "api_key", "sending_domain", id, "example.com",
				"cli " + u.Username + "@" + host} {
				if !strings.Contains(text, want) {
					t.Errorf("smtpgw audit lacks %q:\n%s", want, text)
				}
			}
			js := c.must("audit", "--json", "--since", "1h")
			var res struct {
				Results []struct {
					Action string `json:"action"`
					Type   string `json:"object_type"`
					Before json.RawMessage
					After  json.RawMessage
					Actor  struct{ Via, User, Host string }
				} `json:"results"`
			}
			if err := json.Unmarshal([]byte(js), &res); err != nil {
				t.Fatalf("audit --json: %v\n%s", err, js)
			}
			if len(res.Results) != 4 || res.Results[0].Action != "delete" || res.Results[3].Action != "create" {
				t.Fatalf("audit --json gave %d entries, want 4 newest first:\n%s", len(res.Results), js)
			}
			for _, r := range res.Results {
				if r.Actor.Via != "cli" || r.Actor.User != u.Username || r.Actor.Host != host {
					t.Errorf("actor %+v, want cli %s@%s", r.Actor, u.Username, host)
				}
			}
			if !strings.Contains(string(res.Results[2].Before), `"app"`) || !strings.Contains(string(res.Results[2].After), `"app2"`) {
				t.Errorf("update entry before %s after %s", res.Results[2].Before, res.Results[2].After)
			}
			if strings.Contains(js, key) || strings.Contains(text, key) || strings.Contains(js, "PRIVATE") {
				t.Errorf("the audit log shows a secret:\n%s", js)
			}

			// Paging.
			page := c.must("audit", "--limit", "3")
			i := strings.Index(page, "--cursor ")
			if i < 0 {
				t.Fatalf("a full page names no cursor:\n%s", page)
			}
			cur := strings.Fields(page[i+len("--cursor "):])[0]
			rest := c.must("audit", "--limit", "3", "--cursor", cur)
			if strings.Count(rest, "api_key") != 1 || strings.Contains(rest, "--cursor") {
				t.Errorf("second page:\n%s\nwant the first creation only", rest)
			}
			if code, _, errs := c.run("audit", "--cursor", "zz"); code != 2 || !strings.Contains(errs, "cursor") {
				t.Errorf("bad cursor: exit %d, %s", code, errs)
			}
		})
	}
}
