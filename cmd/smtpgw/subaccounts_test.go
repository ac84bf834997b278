package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestSubaccountsCLI(t *testing.T) {
	t.Parallel()
	for name, setup := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t)
			out := c.must("subaccounts", "create", "--name", "Acme", "--key-label", "acme smtp", "--key-grant", "smtp/inject")
			if !strings.Contains(out, `Created subaccount 1 ("Acme")`) || keyLine.FindStringSubmatch(out) == nil {
				t.Fatalf("create output:\n%s", out)
			}
			var created struct {
				Results struct {
					ID  int64  `json:"subaccount_id"`
					Key string `json:"key"`
				} `json:"results"`
			}
			out = c.must("subaccounts", "create", "--name", "Kept", "--id", "40", "--json")
			if err := json.Unmarshal([]byte(out), &created); err != nil || created.Results.ID != 40 || created.Results.Key != "" {
				t.Fatalf("create --id 40 --json: %v\n%s", err, out)
			}
			if out := c.must("keys", "create", "--label", "k", "--grant", "smtp/inject", "--subaccount", "40"); !strings.Contains(out, "Created API key") {
				t.Errorf("key for subaccount 40:\n%s", out)
			}
			code, _, errs := c.run("keys", "create", "--label", "k", "--grant", "smtp/inject", "--subaccount", "41")
			if code != 1 || !strings.Contains(errs, "no subaccount 41") {
				t.Errorf("key for a missing subaccount: exit %d, %s", code, errs)
			}
			out = c.must("subaccounts", "list")
			if !strings.Contains(out, `"Acme"`) || !strings.Contains(out, "40") || !strings.Contains(out, "active") {
				t.Errorf("list:\n%s", out)
			}
			out = c.must("subaccounts", "update", "1", "--status", "suspended", "--name", "Acme Inc")
			if !strings.Contains(out, "Status:   suspended") || !strings.Contains(out, `"Acme Inc"`) {
				t.Errorf("update:\n%s", out)
			}
			out = c.must("subaccounts", "show", "1", "--json")
			if !strings.Contains(out, `"status": "suspended"`) {
				t.Errorf("show --json:\n%s", out)
			}
			for _, tc := range []struct {
				args []string
				code int
				want string
			}{
				{[]string{"subaccounts", "create"}, 2, "--name is required"},
				{[]string{"subaccounts", "create", "--name", "x", "--key-label", "k"}, 2, "--key-grant"},
				{[]string{"subaccounts", "create", "--name", "x", "--id", "40"}, 1, "already exists"},
				{[]string{"subaccounts", "show", "7"}, 1, "no subaccount 7"},
				{[]string{"subaccounts", "show", "x"}, 2, "not a subaccount id"},
				{[]string{"subaccounts", "update", "1"}, 2, "nothing to change"},
				{[]string{"subaccounts", "update", "1", "--status", "paused"}, 1, "not a status"},
				{[]string{"subaccounts", "nope"}, 2, "unknown subcommand"},
			} {
				code, _, errs := c.run(tc.args...)
				if code != tc.code || !strings.Contains(errs, tc.want) {
					t.Errorf("smtpgw %s: exit %d, stderr %q; want exit %d with %q", strings.Join(tc.args, " "), code, errs, tc.code, tc.want)
				}
			}
		})
	}
}
