package smtpd

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/store"
)

// domainCacheTTL is how long the list of sending domains is reused: a
// domain added with the CLI is usable within this time on every node.
const domainCacheTTL = 5 * time.Second

// domainCache holds the sending domains, refreshed from the store at most
// every ttl. Concurrent misses wait for one load.
type domainCache struct {
	st  store.Store
	ttl time.Duration

	mu      sync.Mutex
	fetched time.Time
	byName  map[string]*store.Domain // nil: none configured
	// verified holds the domains whose ownership (DKIM record) was verified.
	verified map[string]bool
}

// check decides on a message whose From: domain is domain, sent by
// subaccount sub (SPEC §4): nil when no sending domain is configured at
// all (and verification is not required); otherwise domain must be
// configured for sub itself or shared, else the reply is 550 5.7.1
// Unconfigured Sending Domain; and with requireVerified its DKIM record
// must have been verified, else 550 5.7.1 Unverified Sending Domain.
func (d *domainCache) check(ctx context.Context, domain string, sub int64, requireVerified bool) (*smtp.SMTPError, error) {
	byName, verified, err := d.get(ctx)
	if err != nil {
		return nil, err
	}
	name := domain
	if name == "" {
		name = "(no From: address)"
	}
	if len(byName) == 0 && !requireVerified {
		return nil, nil
	}
	dom, ok := byName[strings.ToLower(domain)]
	if !ok || !(dom.Subaccount == sub || dom.Shared) {
		return unconfiguredDomain(name), nil
	}
	if requireVerified && !verified[dom.Name] {
		return unverifiedDomain(name), nil
	}
	return nil, nil
}

func (d *domainCache) get(ctx context.Context) (map[string]*store.Domain, map[string]bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.fetched.IsZero() && time.Since(d.fetched) < d.ttl {
		return d.byName, d.verified, nil
	}
	list, err := d.st.ListDomains(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list sending domains: %w", err)
	}
	statuses, err := d.st.DomainStatuses(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("list sending domain statuses: %w", err)
	}
	var m map[string]*store.Domain
	if len(list) > 0 {
		m = make(map[string]*store.Domain, len(list))
		for _, dom := range list {
			m[strings.ToLower(dom.Name)] = dom
		}
	}
	v := make(map[string]bool, len(statuses))
	for name, st := range statuses {
		v[name] = st.OwnershipVerified
	}
	d.byName, d.verified, d.fetched = m, v, time.Now()
	return m, v, nil
}
