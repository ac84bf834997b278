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

// DefaultSnapshotMax is how many entries the suppression lists (every
// account's together) may hold for a Checker to keep them whole in memory;
// about 100 bytes each. Past it, each lookup asks the store.
const DefaultSnapshotMax = 100_000

// bigRecheck is how often a Checker whose lists were too large to hold
// asks again how large they are: counting them is a scan.
const bigRecheck = 10 * time.Minute

// Checker answers "is this recipient suppressed for this account?" on the
// SMTP path. It is safe for concurrent use.
//
// While the lists hold at most SnapshotMax entries, it keeps them whole in
// memory (a snapshot) and answers every lookup from there, so a message to
// a recipient never seen before costs no query; every ttl it asks the
// store for the lists' digest (a count and two aggregates over one table)
// and reloads them only if that changed. Larger lists are looked up per
// recipient, each answer cached for ttl. Either way a change made
// elsewhere applies within ttl, and one made here at once (Evict: the
// recipient is looked up in the store until the next snapshot).
type Checker struct {
	st  store.Store
	ttl time.Duration // <= 0: no cache, no snapshot

	// SnapshotMax is DefaultSnapshotMax unless set before the first
	// Lookup (tests lower it).
	SnapshotMax int

	refresh sync.Mutex // held while a snapshot is refreshed

	mu   sync.Mutex
	snap *snapshot // nil: none yet
	// gen counts Evict calls; dirty holds each evicted recipient with the
	// gen of its eviction, until a snapshot read after it is in place.
	gen   uint64
	dirty map[string]uint64
	// m maps a lowercased recipient to what is known of it per account
	// asked for (the account of the message, whose lists include the
	// master account's).
	m map[string]map[int64]cachedTypes
}

type cachedTypes struct {
	types   Types
	expires time.Time
}

// snapshot is the suppression lists as of checked (immutable once made).
type snapshot struct {
	digest  store.SuppressionDigest
	checked time.Time
	// m maps a recipient in an account to its types; nil: the lists were
	// larger than SnapshotMax, look each recipient up.
	m map[entryKey]Types
}

// entryKey is a recipient (lowercased) in an account's list.
type entryKey struct {
	recipient string
	account   int64
}

// NewChecker returns a Checker on st caching lookups for ttl (0:
// DefaultTTL; negative: no cache).
func NewChecker(st store.Store, ttl time.Duration) *Checker {
	if ttl == 0 {
		ttl = DefaultTTL
	}
	return &Checker{st: st, ttl: ttl, SnapshotMax: DefaultSnapshotMax, m: make(map[string]map[int64]cachedTypes)}
}

// Lookup returns, for each of addrs, the types it is suppressed for in a
// message of subaccount sub: the union of sub's list and the master
// account's. The snapshot answers, or else cached answers; the others are
// looked up in one store query.
func (c *Checker) Lookup(ctx context.Context, sub int64, addrs []string) ([]Types, error) {
	out := make([]Types, len(addrs))
	keys := make([]string, len(addrs))
	for i, a := range addrs {
		keys[i] = strings.ToLower(a)
	}
	now := time.Now()
	ask := make([]int, 0, len(addrs)) // indexes the snapshot does not answer
	if c.ttl > 0 {
		snap, err := c.current(ctx, now)
		if err != nil {
			return nil, fmt.Errorf("look up suppression list: %w", err)
		}
		if snap.m != nil {
			c.mu.Lock()
			for i, k := range keys {
				if _, changed := c.dirty[k]; changed {
					ask = append(ask, i)
					continue
				}
				out[i] = snap.m[entryKey{k, 0}] | snap.m[entryKey{k, sub}]
			}
			c.mu.Unlock()
			if len(ask) == 0 {
				return out, nil
			}
		}
	}
	if len(ask) == 0 {
		for i := range keys {
			ask = append(ask, i)
		}
	}
	if err := c.lookupStore(ctx, now, sub, keys, ask, out); err != nil {
		return nil, err
	}
	return out, nil
}

// lookupStore fills out[i] for each i of ask from the per-recipient
// cache, and from one store query for the rest, which it caches.
func (c *Checker) lookupStore(ctx context.Context, now time.Time, sub int64, keys []string, ask []int, out []Types) error {
	var miss []string
	c.mu.Lock()
	for _, i := range ask {
		if e, ok := c.m[keys[i]][sub]; ok && c.ttl > 0 && now.Before(e.expires) {
			out[i] = e.types
			continue
		}
		miss = append(miss, keys[i])
	}
	c.mu.Unlock()
	if len(miss) == 0 {
		return nil
	}
	accounts := []int64{0}
	if sub != 0 {
		accounts = append(accounts, sub)
	}
	rows, err := c.st.SuppressionsFor(ctx, accounts, dedup(miss))
	if err != nil {
		return fmt.Errorf("look up suppression list: %w", err)
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
	for _, i := range ask {
		k := keys[i]
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
	return nil
}

// Evict forgets what is cached of recipient (any account) and marks it
// changed, so a change made in this process applies to the next lookup:
// until a snapshot read after the change replaces the current one (at the
// next refresh, within ttl), the recipient is looked up in the store. The
// snapshot itself stays: a node that adds a suppression for every hard
// bounce must not read the lists again for each.
func (c *Checker) Evict(recipient string) {
	k := strings.ToLower(recipient)
	c.mu.Lock()
	delete(c.m, k)
	c.gen++
	if c.dirty == nil {
		c.dirty = make(map[string]uint64)
	}
	c.dirty[k] = c.gen
	c.mu.Unlock()
}

// current returns a snapshot checked within ttl, refreshing it if needed:
// the digest first, the lists only if it changed. One refresh runs at a
// time; the others wait for it.
func (c *Checker) current(ctx context.Context, now time.Time) (*snapshot, error) {
	fresh := func() *snapshot {
		c.mu.Lock()
		defer c.mu.Unlock()
		s := c.snap
		if s == nil {
			return nil
		}
		if age := now.Sub(s.checked); age < c.ttl || s.m == nil && age < bigRecheck {
			return s
		}
		return nil
	}
	if s := fresh(); s != nil {
		return s, nil
	}
	c.refresh.Lock()
	defer c.refresh.Unlock()
	if s := fresh(); s != nil {
		return s, nil
	}
	// What was evicted before this point is in what is read below: Evict
	// comes after its change committed.
	c.mu.Lock()
	old, gen := c.snap, c.gen
	c.mu.Unlock()
	d, err := c.st.SuppressionsDigest(ctx)
	if err != nil {
		return nil, err
	}
	var s *snapshot
	switch max := c.SnapshotMax; {
	case old != nil && old.m != nil && old.digest == d:
		s = &snapshot{digest: d, checked: now, m: old.m}
	case d.Count > int64(max):
		s = &snapshot{digest: d, checked: now}
	default:
		all, d, err := c.st.AllSuppressions(ctx, max)
		if err != nil {
			return nil, err
		}
		s = &snapshot{digest: d, checked: now}
		if d.Count <= int64(max) {
			s.m = make(map[entryKey]Types, len(all))
			for _, e := range all {
				s.m[entryKey{e.Recipient, e.Subaccount}] |= typeOf(e.Type)
			}
		}
	}
	c.mu.Lock()
	c.snap = s
	for k, g := range c.dirty {
		if g <= gen {
			delete(c.dirty, k)
		}
	}
	c.mu.Unlock()
	return s, nil
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
