package api

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/events"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/relay"
	"github.com/smtpgw/smtpgw/store"
)

// The JSON shapes below are shared by the HTTP API and the CLI's --json
// output (cmd/smtpgw), so the two cannot drift apart.

// Key is an API key as the HTTP API and `smtpgw keys --json` show it,
// shaped like SparkPost's API key object. The key itself appears only in
// Key, and only in the answer to create.
type Key struct {
	// ID is the key's public id.
	ID string `json:"id"`
	// Key is the key itself: set only in the answer to create.
	Key string `json:"key,omitempty"`
	// Label is the admin's name for the key.
	Label string `json:"label"`
	// Grants are the key's SparkPost grant names.
	Grants []string `json:"grants"`
	// ValidIPs are the addresses or CIDR prefixes the key may be used
	// from; empty means any address.
	ValidIPs []string `json:"valid_ips"`
	// ShortKey is the key's first four characters.
	ShortKey string `json:"short_key"`
	// Subaccount is the key's subaccount, omitted for the master account.
	Subaccount int64 `json:"subaccount_id,omitempty"`
	// CreatedAt is the creation time, RFC 3339 in UTC.
	CreatedAt string `json:"created_at"`
	// UpdatedAt is the time of the last change, RFC 3339 in UTC.
	UpdatedAt string `json:"updated_at"`
	// LastUsed is the time the key was last used (recorded at most once a
	// minute), omitted if never.
	LastUsed string `json:"last_used,omitempty"`
	// LastUsedIP is the client address of that use, omitted if never.
	LastUsedIP string `json:"last_used_ip,omitempty"`
	// ExpiresAt is when the key stops being accepted, RFC 3339 in UTC;
	// omitted if it never expires.
	ExpiresAt string `json:"expires_at,omitempty"`
	// Expired is true once ExpiresAt has passed (the key is refused as a
	// deleted one would be); omitted otherwise.
	Expired bool `json:"expired,omitempty"`
	// Limits are the key's sending limits; omitted if it has none.
	Limits *Limits `json:"limits,omitempty"`
	// Usage is, per limit, the current window's count: shown for one key
	// (GET /api/v1/api-keys/{id}, keys show), omitted in listings.
	Usage map[string]Usage `json:"usage,omitempty"`
}

// Limits are sending limits as the API takes and shows them: messages per
// calendar window (UTC); 0 or absent is no limit.
type Limits struct {
	PerMinute int64 `json:"per_minute,omitempty"`
	PerHour   int64 `json:"per_hour,omitempty"`
	PerDay    int64 `json:"per_day,omitempty"`
	PerMonth  int64 `json:"per_month,omitempty"`
}

// NewLimits returns the JSON shape of stored limits; nil for none.
func NewLimits(l store.Limits) *Limits {
	if l.IsZero() {
		return nil
	}
	return &Limits{PerMinute: l.PerMinute, PerHour: l.PerHour, PerDay: l.PerDay, PerMonth: l.PerMonth}
}

// Store returns the limits as stored.
func (l *Limits) Store() store.Limits {
	if l == nil {
		return store.Limits{}
	}
	return store.Limits{PerMinute: l.PerMinute, PerHour: l.PerHour, PerDay: l.PerDay, PerMonth: l.PerMonth}
}

// Usage is the current window of one limit.
type Usage struct {
	// Limit is the limit of the window.
	Limit int64 `json:"limit"`
	// Used is the messages counted in the window over every node (quota a
	// node reserved and has not used yet included: see docs/api.md).
	Used int64 `json:"used"`
	// Remaining is Limit minus Used, at least 0.
	Remaining int64 `json:"remaining"`
	// ResetsAt is the end of the window, RFC 3339 in UTC.
	ResetsAt string `json:"resets_at"`
}

// NewUsage returns the usage object of a key or subaccount, keyed by the
// limits' field names ("per_hour"); nil if it has no limits.
func NewUsage(us []limits.Usage) map[string]Usage {
	if len(us) == 0 {
		return nil
	}
	out := make(map[string]Usage, len(us))
	for _, u := range us {
		out[u.Unit.Field()] = Usage{Limit: u.Max, Used: u.Used, Remaining: u.Remaining(),
			ResetsAt: u.Until.UTC().Format(time.RFC3339)}
	}
	return out
}

// NewKey returns the JSON shape of a stored key (without the key itself).
func NewKey(k *store.Key) Key {
	j := Key{
		ID:         k.ID,
		Label:      k.Label,
		Grants:     k.Grants,
		ShortKey:   k.ShortKey,
		Subaccount: k.Subaccount,
		ValidIPs:   PrefixStrings(k.AllowedIPs),
		CreatedAt:  k.CreatedAt.UTC().Format(time.RFC3339),
		UpdatedAt:  k.UpdatedAt.UTC().Format(time.RFC3339),
	}
	if j.Grants == nil {
		j.Grants = []string{}
	}
	if !k.LastUsedAt.IsZero() {
		j.LastUsed = k.LastUsedAt.UTC().Format(time.RFC3339)
	}
	if k.LastUsedIP.IsValid() {
		j.LastUsedIP = k.LastUsedIP.String()
	}
	if !k.ExpiresAt.IsZero() {
		j.ExpiresAt = k.ExpiresAt.UTC().Format(time.RFC3339)
		j.Expired = k.Expired(time.Now())
	}
	return j
}

// PrefixStrings formats prefixes as strings; never nil.
func PrefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// Domain is a sending domain as the HTTP API and `smtpgw domains --json`
// show it; never its private key. The dkim object has the fields of
// SparkPost's sending domain object that apply here.
type Domain struct {
	// Domain is the domain name, lowercased.
	Domain string `json:"domain"`
	// Subaccount owns the domain; omitted for the master account.
	Subaccount int64 `json:"subaccount_id,omitempty"`
	// Shared: every subaccount may send from the domain.
	Shared bool `json:"shared_with_subaccounts"`
	// Selector is the DKIM selector.
	Selector string `json:"dkim_selector"`
	// Algorithm is the DKIM key algorithm: "rsa" or "ed25519".
	Algorithm string `json:"dkim_algorithm"`
	// DNSName is the name of the DNS TXT record to publish.
	DNSName string `json:"dkim_record_name"`
	// DNSValue is the value of the DNS TXT record to publish.
	DNSValue string `json:"dkim_record_value"`
	// DKIM repeats the key in SparkPost's shape.
	DKIM DomainDKIM `json:"dkim"`
	// CreatedAt is the creation time, RFC 3339 in UTC.
	CreatedAt string `json:"created_at"`
	// Status is SparkPost's status object (the API's answers; omitted
	// where the caller did not look it up).
	Status *DomainStatus `json:"status,omitempty"`
}

// DomainDKIM is the dkim object of a sending domain, as SparkPost shows it.
type DomainDKIM struct {
	// Selector is the DKIM selector.
	Selector string `json:"selector"`
	// Public is the public key as published in the p= tag.
	Public string `json:"public"`
	// SigningDomain is the d= domain of signatures: the domain itself.
	SigningDomain string `json:"signing_domain"`
}

// NewDomain returns the JSON shape of a stored sending domain, with the DNS
// record to publish.
func NewDomain(d *store.Domain) Domain {
	name, value := relay.DKIMRecord(d)
	return Domain{
		Domain:     d.Name,
		Subaccount: d.Subaccount,
		Shared:     d.Shared,
		Selector:   d.Selector,
		Algorithm:  d.Algorithm,
		DNSName:    name,
		DNSValue:   value,
		DKIM:       DomainDKIM{Selector: d.Selector, Public: d.PublicKey, SigningDomain: d.Name},
		CreatedAt:  d.CreatedAt.UTC().Format(time.RFC3339),
	}
}

// Event is a message event as the HTTP API, webhooks and `smtpgw events
// --json` show it (package events).
type Event = events.Event

// NewEvent returns the JSON shape of a stored event.
func NewEvent(ev store.Event) Event { return events.New(ev) }

// NormalizeDomain lowercases a domain name, drops a final dot, and checks
// it is an ASCII (punycode) name of at least two labels.
func NormalizeDomain(s string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	if d == "" || len(d) > 253 || !strings.Contains(d, ".") {
		return "", fmt.Errorf("%q is not a domain name (e.g. example.com)", s)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", fmt.Errorf("%q is not a domain name (e.g. example.com)", s)
		}
		if !ldh(label) {
			return "", fmt.Errorf("%q is not a domain name: use the ASCII (punycode) form", s)
		}
	}
	return d, nil
}

// ldh reports whether s has only lowercase letters, digits and hyphens.
func ldh(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// validSelector reports whether s can be a DKIM selector: one DNS label.
func validSelector(s string) bool {
	return s != "" && len(s) <= 63 && s[0] != '-' && s[len(s)-1] != '-' && ldh(strings.ToLower(s))
}

// Subaccount is a subaccount as the HTTP API and `smtpgw subaccounts
// --json` show it, with SparkPost's fields. compliance_status repeats
// status: there is no separate compliance review here.
type Subaccount struct {
	// ID is the subaccount id.
	ID int64 `json:"id"`
	// Name is the admin's name for it.
	Name string `json:"name"`
	// Status is active, suspended or terminated.
	Status string `json:"status"`
	// ComplianceStatus is the same as Status.
	ComplianceStatus string `json:"compliance_status"`
	// CreatedAt is the creation time, RFC 3339 in UTC.
	CreatedAt string `json:"created_at"`
	// UpdatedAt is the time of the last change, RFC 3339 in UTC.
	UpdatedAt string `json:"updated_at"`
}

// NewSubaccount returns the JSON shape of a stored subaccount.
func NewSubaccount(sa *store.Subaccount) Subaccount {
	return Subaccount{ID: sa.ID, Name: sa.Name, Status: sa.Status, ComplianceStatus: sa.Status,
		CreatedAt: sa.CreatedAt.UTC().Format(time.RFC3339), UpdatedAt: sa.UpdatedAt.UTC().Format(time.RFC3339)}
}

// SubaccountCreated is the answer to creating a subaccount, in SparkPost's
// shape: the id and, when a key was set up, the key (this one time), its
// label and short key.
type SubaccountCreated struct {
	ID       int64  `json:"subaccount_id"`
	Key      string `json:"key,omitempty"`
	Label    string `json:"label,omitempty"`
	ShortKey string `json:"short_key,omitempty"`
}

// Suppression is a suppression list entry as the HTTP API and `smtpgw
// suppressions --json` show it, with SparkPost's fields (transactional
// and non_transactional are its older, boolean form of type).
type Suppression struct {
	Recipient        string `json:"recipient"`
	Type             string `json:"type"`
	Source           string `json:"source"`
	Description      string `json:"description"`
	Transactional    bool   `json:"transactional"`
	NonTransactional bool   `json:"non_transactional"`
	// Subaccount owns the entry; omitted for the master account's list.
	Subaccount int64  `json:"subaccount_id,omitempty"`
	Created    string `json:"created"`
	Updated    string `json:"updated"`
}

// NewSuppression returns the JSON shape of a stored entry.
func NewSuppression(e store.Suppression) Suppression {
	return Suppression{Recipient: e.Recipient, Type: e.Type, Source: e.Source, Description: e.Description,
		Transactional: e.Type == store.SuppressTransactional, NonTransactional: e.Type == store.SuppressNonTransactional,
		Subaccount: e.Subaccount, Created: e.CreatedAt.UTC().Format(time.RFC3339), Updated: e.UpdatedAt.UTC().Format(time.RFC3339)}
}
