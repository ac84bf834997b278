package suppression

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// DefaultTTL is how long a Checker trusts a lookup: the time a change made
// by another process may take to apply.
const DefaultTTL = 5 * time.Second

// maxCached bounds the Checker's cache; past it, expired entries are swept
// and, if none were, the cache starts over.
const maxCached = 200_000

// Checker answers "is this recipient suppressed for this account?" on the
// SMTP path. It is safe for concurrent use.
type Checker struct {
	st  store.Store
	ttl time.Duration // <= 0: no cache

	mu sync.Mutex
	// m maps a lowercased recipient to what is known of it per account
	// asked for (the account of the message, whose lists include the
	// master account's).
	m map[string]map[int64]cachedTypes
}

type cachedTypes struct {
	types   Types
	expires time.Time
}

// NewChecker returns a Checker on st caching lookups for ttl (0:
// DefaultTTL; negative: no cache).
func NewChecker(st store.Store, ttl time.Duration) *Checker {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	return &Checker{st: st, ttl: ttl, m: make(map[string]map[int64]cachedTypes)}
}

// Lookup returns, for each of addrs, the types it is suppressed for in a
// message of subaccount sub: the union of sub's list and the master
// account's. Cached answers are used; the others are looked up in one
// store query.
func (c *Checker) Lookup(ctx context.Context, sub int64, addrs []string) ([]Types, error) {
	out := make([]Types, len(addrs))
	keys := make([]string, len(addrs))
	var miss []string
	now := time.Now()
	c.mu.Lock()
	for i, a := range addrs {
		k := strings.ToLower(a)
		keys[i] = k
		if e, ok := c.m[k][sub]; ok && c.ttl > 0 && now.Before(e.expires) {
			out[i] = e.types
			continue
		}
		miss = append(miss, k)
	}
	c.mu.Unlock()
	if len(miss) == 0 {
		return out, nil
	}
	accounts := []int64{0}
	if sub != 0 {
		accounts = append(accounts, sub)
	}
	rows, err := c.st.SuppressionsFor(ctx, accounts, dedup(miss))
	if err != nil {
		return nil, fmt.Errorf("look up suppression list: %w", err)
	}
	found := make(map[string]Types, len(rows))
	for _, r := range rows {
		found[r.Recipient] |= typeOf(r.Type)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttl > 0 && c.size() > maxCached {
		c.sweep(now)
	}
	for i, k := range keys {
		if t, ok := found[k]; ok {
			out[i] = t
		}
		if c.ttl > 0 {
			per := c.m[k]
			if per == nil {
				per = make(map[int64]cachedTypes, 1)
				c.m[k] = per
			}
			per[sub] = cachedTypes{types: out[i], expires: now.Add(c.ttl)}
		}
	}
	return out, nil
}

// Evict forgets what is cached of recipient (any account), so a change
// made in this process applies to the next lookup.
func (c *Checker) Evict(recipient string) {
	c.mu.Lock()
	delete(c.m, strings.ToLower(recipient))
	c.mu.Unlock()
}

// size is the number of cached recipients (c.mu held).
func (c *Checker) size() int { return len(c.m) }

// sweep deletes expired entries, or everything if none was (c.mu held).
func (c *Checker) sweep(now time.Time) {
	n := len(c.m)
	for k, per := range c.m {
		for sub, e := range per {
			if !now.Before(e.expires) {
				delete(per, sub)
			}
		}
		if len(per) == 0 {
			delete(c.m, k)
		}
	}
	if len(c.m) == n {
		c.m = make(map[string]map[int64]cachedTypes)
	}
}

func dedup(ss []string) []string {
	seen := make(map[string]bool, len(ss))
	out := ss[:0:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
