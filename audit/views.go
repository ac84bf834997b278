package audit

import (
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
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// KeyView is k's recorded view.
func KeyView(k *store.Key) *Key {
	v := &Key{ID: k.ID, Label: k.Label, Grants: append([]string{}, k.Grants...), ShortKey: k.ShortKey,
		Subaccount: k.Subaccount, AllowedIPs: []string{}}
	for _, p := range k.AllowedIPs {
		v.AllowedIPs = append(v.AllowedIPs, p.String())
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
