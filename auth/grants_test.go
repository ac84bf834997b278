package auth

import (
	"slices"
	"strings"
	"testing"
)

func TestValidateGrants(t *testing.T) {
	t.Parallel()
	ok := [][]string{
		{"smtp/inject"},
		{"smtp/inject", "metrics/view", "api_keys/manage", "message_events/view", "sending_domains/manage"},
		{"transmissions/modify"}, // accepted, no effect
		{"templates/view", "suppression_lists/manage", "webhooks/view", "ip_pools/manage"},
		{" smtp/inject ", "smtp/inject"}, // trimmed and deduplicated
	}
	for _, g := range ok {
		if err := ValidateGrants(g); err != nil {
			t.Errorf("ValidateGrants(%q) = %v, want nil", g, err)
		}
	}

	mustFail := []struct {
		grants []string
		want   []string // substrings of the error
	}{
		{nil, []string{"no grant", "smtp/inject"}},
		{[]string{}, []string{"no grant"}},
		{[]string{"", "  "}, []string{"no grant"}},
		{[]string{"smtp/injet"}, []string{`"smtp/injet"`, "smtp/inject", "metrics/view"}},
		{[]string{"SMTP/Inject"}, []string{`"SMTP/Inject"`}}, // case-sensitive, as SparkPost
		{[]string{"smtp/inject", "admin"}, []string{`grant "admin"`}},
		{[]string{"x", "y"}, []string{`grants "x", "y"`}},
		{[]string{"smtp"}, []string{`"smtp"`}},
		{[]string{"*"}, []string{`"*"`}},
		{[]string{"smtp/inject/"}, []string{`"smtp/inject/"`}},
	}
	for _, c := range mustFail {
		err := ValidateGrants(c.grants)
		if err == nil {
			t.Errorf("ValidateGrants(%q) = nil, want an error", c.grants)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ValidateGrants(%q) = %q, want it to contain %q", c.grants, err, w)
			}
		}
	}
}

func TestNormalizeGrants(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in, want []string
	}{
		{nil, nil},
		{[]string{}, []string{}},
		{[]string{"b", "a", "b", " a ", ""}, []string{"b", "a"}},
		{[]string{"smtp/inject"}, []string{"smtp/inject"}},
	}
	for _, c := range cases {
		got := NormalizeGrants(c.in)
		if !slices.Equal(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("NormalizeGrants(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestGrantLists(t *testing.T) {
	t.Parallel()
	for _, g := range []string{GrantSMTPInject, GrantAPIKeysManage, GrantEventsView, GrantDomainsManage,
		GrantMetricsView, GrantSubaccountsManage, GrantSuppressionsManage, GrantWebhooksView, GrantWebhooksModify} {
		if !slices.Contains(EnforcedGrants, g) {
			t.Errorf("EnforcedGrants lacks %q", g)
		}
	}
	for _, g := range EnforcedGrants {
		if !IsEnforced(g) {
			t.Errorf("IsEnforced(%q) = false", g)
		}
		if !slices.Contains(AcceptedGrants, g) {
			t.Errorf("AcceptedGrants lacks enforced %q", g)
		}
	}
	seen := map[string]bool{}
	for _, g := range AcceptedGrants {
		if seen[g] {
			t.Errorf("AcceptedGrants lists %q twice", g)
		}
		seen[g] = true
	}
	for _, g := range []string{"transmissions/modify", "templates/view", "subaccounts/view", "account/view"} {
		if IsEnforced(g) {
			t.Errorf("IsEnforced(%q) = true, want false (accepted, no effect)", g)
		}
		if !seen[g] {
			t.Errorf("AcceptedGrants lacks SparkPost's %q", g)
		}
	}
	if IsEnforced("") || IsEnforced("nope") {
		t.Error("IsEnforced accepts an unknown grant")
	}
}
