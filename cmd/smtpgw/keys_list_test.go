package main

import (
	"encoding/json"
	"fmt"
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
