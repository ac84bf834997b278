package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// listJSON is the output of keys list --json.
type listJSON struct {
	Results []struct {
		ID    string `json:"id"`
		Label string `json:"label"`
	} `json:"results"`
	NextCursor string `json:"next_cursor"`
}

func decodeList(t *testing.T, out string) listJSON {
	t.Helper()
	var l listJSON
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("keys list --json printed invalid JSON: %v\n%s", err, out)
	}
	return l
}

// TestKeysListPaging lists keys whole (streamed page by page), a page at a
// time with --limit/--cursor, and filtered.
func TestKeysListPaging(t *testing.T) {
	t.Parallel()
	for name, setup := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t)
			if l := decodeList(t, c.must("keys", "list", "--json")); len(l.Results) != 0 || l.NextCursor != "" {
				t.Errorf("empty store: %+v", l)
			}
			c.must("subaccounts", "create", "--name", "tenant 1") // keys belong to existing subaccounts
			for i := range 5 {
				c.must("keys", "create", "--label", fmt.Sprintf("app-%d", i), "--grant", "smtp/inject",
					"--subaccount", fmt.Sprint(i%2))
			}
			all := decodeList(t, c.must("keys", "list", "--json"))
			if len(all.Results) != 5 || all.NextCursor != "" {
				t.Fatalf("keys list --json: %+v, want 5 keys and no cursor", all)
			}
			var paged []string
			args := []string{"keys", "list", "--json", "--limit", "2"}
			for range 5 {
				l := decodeList(t, c.must(args...))
				if len(l.Results) > 2 {
					t.Fatalf("page of %d keys with --limit 2", len(l.Results))
				}
				for _, k := range l.Results {
					paged = append(paged, k.ID)
				}
				if l.NextCursor == "" {
					break
				}
				args = []string{"keys", "list", "--json", "--limit", "2", "--cursor", l.NextCursor}
			}
			for i, k := range all.Results {
				if i >= len(paged) || paged[i] != k.ID {
					t.Fatalf("paged listing %v differs from the whole one", paged)
				}
			}
			if l := decodeList(t, c.must("keys", "list", "--json", "--label", "APP-3")); len(l.Results) != 1 || l.Results[0].Label != "app-3" {
				t.Errorf("--label APP-3: %+v", l)
			}
			if l := decodeList(t, c.must("keys", "list", "--json", "--subaccount", "1")); len(l.Results) != 2 {
				t.Errorf("--subaccount 1: %+v, want 2 keys", l)
			}
			out := c.must("keys", "list", "--limit", "3")
			if !strings.Contains(out, "More keys: smtpgw keys list --limit 3 --cursor ") {
				t.Errorf("keys list --limit 3 does not say how to get more:\n%s", out)
			}
			code, _, errs := c.run("keys", "list", "--cursor", "garbage!")
			if code != 2 || !strings.Contains(errs, "--cursor") {
				t.Errorf("bad cursor: exit %d, %s", code, errs)
			}
		})
	}
}

// TestKeysLifecycleCommands: --expires, --limit, keys show's usage, keys
// rotate and keys limits --subaccount.
func TestKeysLifecycleCommands(t *testing.T) {
	t.Parallel()
	for name, setup := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, _ := setup(t)
			out := c.must("keys", "create", "--label", "app", "--grant", "smtp/inject", "--expires", "720h",
				"--limit", "1000/h", "--limit", "50000/d")
			if !strings.Contains(out, "It expires at ") || !strings.Contains(out, "Sending limits: 1000/h, 50000/d.") {
				t.Errorf("keys create output:\n%s", out)
			}
			id := regexp.MustCompile(`Created API key ([0-9a-f]{16})`).FindStringSubmatch(out)
			if id == nil {
				t.Fatalf("no key id in:\n%s", out)
			}
			show := c.must("keys", "show", id[1])
			for _, want := range []string{"limits:", "1000/h, 50000/d", "this hour:", "0 of 1000 used, 1000 remaining", "expires:"} {
				if !strings.Contains(show, want) {
					t.Errorf("keys show lacks %q:\n%s", want, show)
				}
			}
			// --limit changes one unit and keeps the others; 0 removes one.
			var j struct {
				Results struct {
					ExpiresAt string `json:"expires_at"`
					Limits    struct {
						PerMinute int64 `json:"per_minute"`
						PerHour   int64 `json:"per_hour"`
						PerDay    int64 `json:"per_day"`
					} `json:"limits"`
					Usage map[string]struct {
						Remaining int64 `json:"remaining"`
					} `json:"usage"`
				} `json:"results"`
			}
			upd := c.must("keys", "update", id[1], "--limit", "10/m", "--limit", "0/h", "--expires", "never", "--json")
			if err := json.Unmarshal([]byte(upd), &j); err != nil {
				t.Fatal(err)
			}
			if r := j.Results; r.ExpiresAt != "" || r.Limits.PerMinute != 10 || r.Limits.PerHour != 0 || r.Limits.PerDay != 50000 || r.Usage["per_minute"].Remaining != 10 {
				t.Errorf("after update: %+v", r)
			}
			code, _, errs := c.run("keys", "update", id[1], "--limit", "10/w")
			if code != 2 || !strings.Contains(errs, "units m, h, d, mo") {
				t.Errorf("bad --limit: exit %d, %s", code, errs)
			}
			code, _, errs = c.run("keys", "create", "--label", "x", "--grant", "smtp/inject", "--expires", "2001-01-01T00:00:00Z")
			if code != 1 || !strings.Contains(errs, "not in the future") {
				t.Errorf("past --expires: exit %d, %s", code, errs)
			}

			// Rotate: a new key printed once, the old one expiring after the overlap.
			rot := c.must("keys", "rotate", id[1], "--overlap", "2h")
			m := keyLine.FindStringSubmatch(rot)
			if m == nil || !strings.Contains(rot, "keeps working until") {
				t.Fatalf("keys rotate output:\n%s", rot)
			}
			old := decodeList(t, c.must("keys", "list", "--json"))
			if len(old.Results) != 2 {
				t.Errorf("after rotate: %d keys listed, want 2", len(old.Results))
			}
			if show := c.must("keys", "show", id[1]); !strings.Contains(show, "expires:") || strings.Contains(show, "expires:     never") {
				t.Errorf("old key after rotate:\n%s", show)
			}

			// Subaccount limits, with subaccounts update.
			created := c.must("subaccounts", "create", "--name", "Acme", "--id", "7")
			if !strings.Contains(created, "7") {
				t.Fatalf("subaccounts create:\n%s", created)
			}
			sub := c.must("subaccounts", "update", "7", "--limit", "500/d")
			if !strings.Contains(sub, "Limits:   500/d") || !strings.Contains(sub, "0 of 500 used") {
				t.Errorf("subaccounts update --limit output:\n%s", sub)
			}
			var sj struct {
				Results struct {
					ID     int64 `json:"id"`
					Limits struct {
						PerDay int64 `json:"per_day"`
					} `json:"limits"`
				} `json:"results"`
			}
			if err := json.Unmarshal([]byte(c.must("subaccounts", "show", "7", "--json")), &sj); err != nil || sj.Results.ID != 7 || sj.Results.Limits.PerDay != 500 {
				t.Errorf("subaccounts show --json: %+v, %v", sj, err)
			}
			if out := c.must("subaccounts", "update", "7", "--no-limits"); !strings.Contains(out, "Limits:   none") {
				t.Errorf("subaccounts update --no-limits:\n%s", out)
			}
			if code, _, _ := c.run("subaccounts", "update", "8", "--limit", "5/m"); code != 1 {
				t.Errorf("limits of a missing subaccount: exit %d, want 1", code)
			}
		})
	}
}
