package auth

import (
	"fmt"
	"slices"
	"strings"
)

// Grants enforced by smtpgw (SPEC §3). They use SparkPost's names so that
// scripts written against SparkPost keep working.
const (
	// GrantSMTPInject allows SMTP submission (AUTH on the submission
	// listeners).
	GrantSMTPInject = "smtp/inject"
	// GrantAPIKeysManage allows the API keys HTTP API.
	GrantAPIKeysManage = "api_keys/manage"
	// GrantEventsView allows the message events HTTP API.
	GrantEventsView = "message_events/view"
	// GrantDomainsManage allows the sending domains HTTP API.
	GrantDomainsManage = "sending_domains/manage"
	// GrantMetricsView allows GET /metrics when the HTTP listener is not on a
	// private address.
	GrantMetricsView = "metrics/view"
	// GrantSubaccountsManage allows the subaccounts HTTP API (master-account
	// keys only).
	GrantSubaccountsManage = "subaccounts/manage"
	// GrantSuppressionsManage allows the suppression list HTTP API.
	GrantSuppressionsManage = "suppression_lists/manage"
	// GrantWebhooksView allows listing webhooks and their batch status.
	GrantWebhooksView = "webhooks/view"
	// GrantWebhooksModify allows creating, changing, validating and
	// deleting webhooks.
	GrantWebhooksModify = "webhooks/modify"
)

// EnforcedGrants are the grants that have an effect in smtpgw.
var EnforcedGrants = []string{
	GrantSMTPInject,
	GrantAPIKeysManage,
	GrantEventsView,
	GrantDomainsManage,
	GrantMetricsView,
	GrantSubaccountsManage,
	GrantSuppressionsManage,
	GrantWebhooksView,
	GrantWebhooksModify,
}

// inertGrants are SparkPost grant names accepted and stored with no effect
// here, so that keys created by SparkPost tooling can be recreated as they
// are. The list holds the names SparkPost documents and the variants its own
// tools send (subaccount/manage next to subaccounts/manage, ab-testing/manage
// next to ab_testing/manage, ...).
var inertGrants = []string{
	"transmissions/modify",
	"transmissions/view",
	"templates/modify",
	"templates/view",
	"templates/preview",
	"snippets/modify",
	"snippets/view",
	"recipient_lists/manage",
	"recipient_lists/view",
	"relay_webhooks/manage",
	"relay_webhooks/modify",
	"relay_webhooks/view",
	"subaccounts/view",
	"subaccount/manage",
	"subaccount/view",
	"tracking_domains/manage",
	"tracking_domains/view",
	"sending_domains/view",
	"inbound_domains/manage",
	"ip_pools/manage",
	"ip_pools/view",
	"account/manage",
	"account/view",
	"account/read-write",
	"ab_testing/manage",
	"ab_testing/view",
	"ab-testing/manage",
	"ab-testing/view",
	"alerts/manage",
	"alerts/view",
	"data-privacy/manage",
	"users/manage",
	"users/view",
	"users/self-manage",
	"grants/view",
}

// AcceptedGrants are all grant names a key may hold: [EnforcedGrants]
// followed by SparkPost's other grant names, which are stored with no
// effect.
var AcceptedGrants = append(slices.Clip(EnforcedGrants), inertGrants...)

// enforcedSet and acceptedSet answer IsEnforced and ValidateGrants. They are
// built from private copies, so a caller modifying the exported slices
// cannot change what is enforced.
var (
	enforcedSet = setOf(EnforcedGrants)
	acceptedSet = setOf(AcceptedGrants)
	enforcedStr = strings.Join(EnforcedGrants, ", ")
)

func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// IsEnforced reports whether grant has an effect in smtpgw (one of
// [EnforcedGrants]).
func IsEnforced(grant string) bool {
	return enforcedSet[grant]
}

// NormalizeGrants returns grants with surrounding white space trimmed, empty
// entries and duplicates removed, in their original order. It never returns
// nil for a non-nil input.
func NormalizeGrants(grants []string) []string {
	if grants == nil {
		return nil
	}
	out := make([]string, 0, len(grants))
	for _, g := range grants {
		g = strings.TrimSpace(g)
		if g == "" || slices.Contains(out, g) {
			continue
		}
		out = append(out, g)
	}
	return out
}

// ValidateGrants checks a key's grant list: at least one grant, and only
// [AcceptedGrants]. Names are case-sensitive, as in SparkPost. Callers
// normalise with [NormalizeGrants] first (ValidateGrants itself ignores
// white space, empty entries and duplicates). The error is a [*ParamError]
// for FieldGrants; it names every unknown grant and lists the known ones.
func ValidateGrants(grants []string) error {
	grants = NormalizeGrants(grants)
	if len(grants) == 0 {
		return paramErrorf(FieldGrants, "no grant given: give at least one, e.g. %s", GrantSMTPInject)
	}
	var unknown []string
	for _, g := range grants {
		if !acceptedSet[g] {
			unknown = append(unknown, fmt.Sprintf("%q", g))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	noun := "grant"
	if len(unknown) > 1 {
		noun = "grants"
	}
	return paramErrorf(FieldGrants, "unknown %s %s: smtpgw enforces %s; SparkPost's other grant names (e.g. transmissions/modify, templates/view) are accepted with no effect",
		noun, strings.Join(unknown, ", "), enforcedStr)
}

// SubaccountGrants are the grants a subaccount's key may hold:
// [AcceptedGrants] without those reserved to master-account keys
// (metrics/view, whose metrics cover every account).
func SubaccountGrants() []string {
	out := make([]string, 0, len(AcceptedGrants))
	for _, g := range AcceptedGrants {
		if !masterOnly(g) {
			out = append(out, g)
		}
	}
	return out
}

// masterOnly reports whether only a master-account key may hold grant.
func masterOnly(grant string) bool { return grant == GrantMetricsView }
