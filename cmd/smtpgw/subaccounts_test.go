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
			if !strings.Contains(out, "Acme") || !strings.Contains(out, "40") || !strings.Contains(out, "active") {
				t.Errorf("list:\n%s", out)
			}
			out = c.must("subaccounts", "update", "1", "--status", "suspended", "--name", "Acme Inc")
			if !strings.Contains(out, "Status:   suspended") || !strings.Contains(out, "Name:     Acme Inc") {
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

func TestSuppressionsCLI(t *testing.T) {
	t.Parallel()
	for name, setup := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t)
			c.must("suppressions", "add", "Gone@Example.com", "--description", "asked by phone")
			c.must("suppressions", "add", "news@example.com", "--type", "non_transactional")
			c.must("subaccounts", "create", "--name", "t")
			c.must("suppressions", "add", "sub@example.com", "--subaccount", "1", "--type", "transactional")
			out := c.must("suppressions", "list")
			for _, want := range []string{"gone@example.com", "asked by phone", "Manually Added", "news@example.com", "sub@example.com"} {
				if !strings.Contains(out, want) {
					t.Errorf("list lacks %q:\n%s", want, out)
				}
			}
			out = c.must("suppressions", "list", "--limit", "2", "--json")
			var page struct {
				Results    []map[string]any `json:"results"`
				TotalCount int64            `json:"total_count"`
				NextCursor string           `json:"next_cursor"`
			}
			if err := json.Unmarshal([]byte(out), &page); err != nil || len(page.Results) != 2 || page.TotalCount != 4 || page.NextCursor == "" {
				t.Fatalf("list --limit 2 --json: %v\n%s", err, out)
			}
			out = c.must("suppressions", "list", "--limit", "2", "--cursor", page.NextCursor, "--subaccount", "0")
			if !strings.Contains(out, "news@example.com") || strings.Contains(out, "sub@example.com") {
				t.Errorf("second page of the master list:\n%s", out)
			}
			out = c.must("suppressions", "show", "gone@example.com", "--json")
			if !strings.Contains(out, `"transactional": true`) || !strings.Contains(out, `"non_transactional": true`) {
				t.Errorf("show --json:\n%s", out)
			}
			c.must("suppressions", "delete", "gone@example.com", "--type", "transactional")
			out = c.must("suppressions", "show", "gone@example.com")
			if strings.Contains(out, "\ttransactional") || !strings.Contains(out, "non_transactional") {
				t.Errorf("after deleting one type:\n%s", out)
			}
			for _, tc := range []struct {
				args []string
				code int
				want string
			}{
				{[]string{"suppressions", "add"}, 2, "give one recipient"},
				{[]string{"suppressions", "add", "x@y.z", "--type", "all"}, 2, "--type must be"},
				{[]string{"suppressions", "add", "not-an-address"}, 1, "not an email address"},
				{[]string{"suppressions", "show", "none@example.com"}, 1, "not on the suppression list"},
				{[]string{"suppressions", "delete", "sub@example.com"}, 1, "not on the master account's suppression list"},
				{[]string{"suppressions", "list", "--limit", "0"}, 1, "per_page"},
			} {
				code, _, errs := c.run(tc.args...)
				if code != tc.code || !strings.Contains(errs, tc.want) {
					t.Errorf("smtpgw %s: exit %d, stderr %q; want exit %d with %q", strings.Join(tc.args, " "), code, errs, tc.code, tc.want)
				}
			}
		})
	}
}
