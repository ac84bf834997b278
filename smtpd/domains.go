package smtpd

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

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
}

// allowed reports whether a message whose From: domain is domain may be
// sent by subaccount sub (SPEC §4): true when no sending domain is
// configured at all; otherwise domain must be configured for sub itself or
// shared.
func (d *domainCache) allowed(ctx context.Context, domain string, sub int64) (bool, error) {
	byName, err := d.get(ctx)
	if err != nil {
		return false, err
	}
	if len(byName) == 0 {
		return true, nil
	}
	dom, ok := byName[strings.ToLower(domain)]
	if !ok {
		return false, nil
	}
	return dom.Subaccount == sub || dom.Shared, nil
}

func (d *domainCache) get(ctx context.Context) (map[string]*store.Domain, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.fetched.IsZero() && time.Since(d.fetched) < d.ttl {
		return d.byName, nil
	}
	list, err := d.st.ListDomains(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sending domains: %w", err)
	}
	var m map[string]*store.Domain
	if len(list) > 0 {
		m = make(map[string]*store.Domain, len(list))
		for _, dom := range list {
			m[strings.ToLower(dom.Name)] = dom
		}
	}
	d.byName, d.fetched = m, time.Now()
	return m, nil
}
