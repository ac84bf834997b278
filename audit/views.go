package audit

import (
	"encoding/json"
	"net/url"
	"slices"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// The views recorded as an object's before and after. Each lists its
// fields one by one, so a secret added to a store type later is not
// recorded by accident.

// Key is the recorded view of an API key: never the key or its hash.
type Key struct {
	ID         string     `json:"id"`
	Label      string     `json:"label"`
	Grants     []string   `json:"grants"`
	ShortKey   string     `json:"short_key"`
	Subaccount int64      `json:"subaccount"`
	AllowedIPs []string   `json:"allowed_ips"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// KeyView is k's recorded view.
func KeyView(k *store.Key) *Key {
	v := &Key{ID: k.ID, Label: k.Label, Grants: append([]string{}, k.Grants...), ShortKey: k.ShortKey,
		Subaccount: k.Subaccount, AllowedIPs: []string{}}
	for _, p := range k.AllowedIPs {
		v.AllowedIPs = append(v.AllowedIPs, p.String())
	}
	if !k.ExpiresAt.IsZero() {
		t := k.ExpiresAt
		v.ExpiresAt = &t
	}
	if !k.RevokedAt.IsZero() {
		t := k.RevokedAt
		v.RevokedAt = &t
	}
	return v
}

// Domain is the recorded view of a sending domain: never its DKIM private
// key.
type Domain struct {
	Name       string `json:"domain"`
	Subaccount int64  `json:"subaccount"`
	Shared     bool   `json:"shared_with_subaccounts"`
	Selector   string `json:"dkim_selector"`
	Algorithm  string `json:"dkim_algorithm"`
	PublicKey  string `json:"dkim_public_key"`
}

// DomainView is d's recorded view.
func DomainView(d *store.Domain) *Domain {
	return &Domain{Name: d.Name, Subaccount: d.Subaccount, Shared: d.Shared, Selector: d.Selector,
		Algorithm: d.Algorithm, PublicKey: d.PublicKey}
}

// Subaccount is the recorded view of a subaccount.
type Subaccount struct {
	ID     int64  `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
}

// SubaccountView is s's recorded view.
func SubaccountView(s *store.Subaccount) *Subaccount {
	return &Subaccount{ID: s.ID, Name: s.Name, Status: s.Status}
}

// Suppression is the recorded view of a suppression list entry.
type Suppression struct {
	Recipient   string `json:"recipient"`
	Subaccount  int64  `json:"subaccount"`
	Type        string `json:"type"`
	Source      string `json:"source"`
	Description string `json:"description"`
}

// SuppressionView is e's recorded view.
func SuppressionView(e store.Suppression) Suppression {
	return Suppression{Recipient: e.Recipient, Subaccount: e.Subaccount, Type: e.Type, Source: e.Source,
		Description: e.Description}
}

// Webhook is the recorded view of a webhook: never its signing secret,
// its credentials (auth details) or the values of its custom headers,
// which often carry tokens — only their names.
type Webhook struct {
	ID          string   `json:"id"`
	Subaccount  *int64   `json:"subaccount"`
	Name        string   `json:"name"`
	Target      string   `json:"target"`
	Events      []string `json:"events"`
	Active      bool     `json:"active"`
	AuthType    string   `json:"auth_type"`
	HeaderNames []string `json:"custom_header_names"`
}

// WebhookView is w's recorded view.
func WebhookView(w *store.Webhook) *Webhook {
	v := &Webhook{ID: w.ID, Subaccount: w.Subaccount, Name: w.Name, Target: redactURL(w.Target),
		Events: append([]string{}, w.Events...), Active: w.Active, AuthType: w.AuthType, HeaderNames: []string{}}
	var headers map[string]json.RawMessage
	if json.Unmarshal(w.Headers, &headers) == nil {
		for name := range headers {
			v.HeaderNames = append(v.HeaderNames, name)
		}
		slices.Sort(v.HeaderNames)
	}
	return v
}

// redactURL drops the password of a URL's user information.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); !has {
		return raw
	}
	return u.Redacted()
}

// Limits is the recorded view of the sending limits of a key or a
// subaccount (0: no limit).
type Limits struct {
	PerMinute int64 `json:"per_minute"`
	PerHour   int64 `json:"per_hour"`
	PerDay    int64 `json:"per_day"`
	PerMonth  int64 `json:"per_month"`
}

// LimitsView is l's recorded view, inside an object naming whose they are.
func LimitsView(l store.Limits) map[string]Limits {
	return map[string]Limits{"limits": {PerMinute: l.PerMinute, PerHour: l.PerHour, PerDay: l.PerDay, PerMonth: l.PerMonth}}
}
