// Package limits enforces sending limits per API key and per subaccount:
// at most N messages per minute, hour, day or calendar month, counted
// across every gateway node that shares the store (SPEC §3, §4).
//
// Contract:
//
//   - A message is one SMTP transaction (one MAIL FROM … DATA accepted),
//     whatever its number of recipients. It counts against its key and
//     against the subaccount it is sent for (a subaccount key's own
//     subaccount, or the one a master key names in its AUTH username).
//   - Windows are calendar windows in UTC: the minute, the hour, the day
//     (from 00:00 UTC) and the month (from the 1st, 00:00 UTC). A count
//     starts again at 0 when its window ends.
//   - [Checker.Reserve] is called at MAIL, before anything is accepted. A
//     message over a limit is refused there (the SMTP server answers
//     451 4.7.1 naming the limit): never accepted and held. When the
//     transaction ends without the message being stored (RSET, refused
//     DATA, dropped connection), [Reservation.Release] gives it back.
//   - Limits are exact across nodes: the counts live in the store and a
//     node takes quota from them with an atomic check-and-increment
//     (store.ReserveQuota) that never passes the limit. So that MAIL does
//     not cost a database round trip, a node reserves quota in chunks (a
//     fiftieth of the limit, at most 100 messages) and hands it out
//     locally. The price: quota a node reserved but did not use stays
//     counted until its window ends, so a scope may be refused up to one
//     chunk per node per window before its limit is really reached. The
//     limit itself is never exceeded.
//   - Limits are read from the store and cached per node for the cache
//     TTL (auth.cache_ttl, default 5 s): a change applies at once on the
//     node that made it ([Checker.Evict]) and within the TTL elsewhere.
//     A limit set during a window counts from then on.
//   - When the store cannot be reached to reserve quota, Reserve returns
//     the store's error; the SMTP server then tries again at the end of
//     DATA, before storing, and refuses the message with a temporary
//     failure (451 4.3.0) if the store is still down.
//
// Counts of windows that ended more than a day ago are pruned by the
// Checker in the background.
package limits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// Unit is a limit's window: minute, hour, day or month.
type Unit string

// The units, as written in "1000/h".
const (
	Minute Unit = "m"
	Hour   Unit = "h"
	Day    Unit = "d"
	Month  Unit = "mo"
)

// Units lists every unit, shortest window first.
var Units = []Unit{Minute, Hour, Day, Month}

// Name is the unit's word: "minute", "hour", "day", "month".
func (u Unit) Name() string {
	switch u {
	case Minute:
		return "minute"
	case Hour:
		return "hour"
	case Day:
		return "day"
	case Month:
		return "month"
	}
	return string(u)
}

// Field is the unit's JSON field in the limits object: "per_minute",
// "per_hour", "per_day", "per_month".
func (u Unit) Field() string { return "per_" + u.Name() }

// Window returns the calendar window of unit u that holds t (UTC).
func Window(u Unit, t time.Time) store.QuotaWindow {
	t = t.UTC()
	var start, end time.Time
	switch u {
	case Minute:
		start = t.Truncate(time.Minute)
		end = start.Add(time.Minute)
	case Hour:
		start = t.Truncate(time.Hour)
		end = start.Add(time.Hour)
	case Day:
		start = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		end = start.AddDate(0, 0, 1)
	default:
		start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		end = start.AddDate(0, 1, 0)
	}
	return store.QuotaWindow{Unit: string(u), Start: start, End: end}
}

// Get returns the limit of unit u in l (0: none).
func Get(l store.Limits, u Unit) int64 {
	switch u {
	case Minute:
		return l.PerMinute
	case Hour:
		return l.PerHour
	case Day:
		return l.PerDay
	case Month:
		return l.PerMonth
	}
	return 0
}

// Set sets the limit of unit u in l (0: none).
func Set(l *store.Limits, u Unit, n int64) {
	switch u {
	case Minute:
		l.PerMinute = n
	case Hour:
		l.PerHour = n
	case Day:
		l.PerDay = n
	case Month:
		l.PerMonth = n
	}
}

// ErrInvalid is matched by the errors of [Parse] and [Validate]: a limit
// the admin must fix.
var ErrInvalid = errors.New("invalid sending limit")

// Parse parses a limit written "N/unit" ("1000/h", "50000/d", "100/m",
// "1000000/mo"; N = 0 removes the limit of that unit).
func Parse(s string) (Unit, int64, error) {
	n, u, ok := strings.Cut(strings.TrimSpace(s), "/")
	v, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
	unit := Unit(strings.ToLower(strings.TrimSpace(u)))
	known := unit == Minute || unit == Hour || unit == Day || unit == Month
	if !ok || err != nil || !known {
		return "", 0, fmt.Errorf("%w: %q is not N/unit: write e.g. 1000/h (units m, h, d, mo; 0/h removes the hourly limit)", ErrInvalid, s)
	}
	if v < 0 {
		return "", 0, fmt.Errorf("%w: %q is negative: give a count of messages, or 0 to remove the limit", ErrInvalid, s)
	}
	return unit, v, nil
}

// Validate refuses negative limits.
func Validate(l store.Limits) error {
	for _, u := range Units {
		if Get(l, u) < 0 {
			return fmt.Errorf("%w: %s is %d: give a count of messages, or 0 for no limit", ErrInvalid, u.Field(), Get(l, u))
		}
	}
	return nil
}

// String writes l as "1000/h, 50000/d" ("none" when l limits nothing).
func String(l store.Limits) string {
	var parts []string
	for _, u := range Units {
		if n := Get(l, u); n > 0 {
			parts = append(parts, fmt.Sprintf("%d/%s", n, u))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// KeyScope is the scope of key id's own limits.
func KeyScope(id string) store.LimitScope {
	return store.LimitScope{Kind: store.LimitKindKey, ID: id}
}

// SubaccountScope is the scope of subaccount n's limits.
func SubaccountScope(n int64) store.LimitScope {
	return store.LimitScope{Kind: store.LimitKindSubaccount, ID: strconv.FormatInt(n, 10)}
}

// ExceededError is the refusal of a message over a limit. Its text names
// the limit and is safe to show to the client (no key, only its scope
// kind).
type ExceededError struct {
	Scope store.LimitScope
	Unit  Unit
	Max   int64
	// Until is when the window ends (and the limit lets mail through
	// again).
	Until time.Time
}

// Error returns e.g. "sending limit of 1000 messages per hour for this
// key reached".
func (e *ExceededError) Error() string {
	who := "this key"
	if e.Scope.Kind == store.LimitKindSubaccount {
		who = "subaccount " + e.Scope.ID
	}
	return fmt.Sprintf("sending limit of %d messages per %s for %s reached", e.Max, e.Unit.Name(), who)
}

// DefaultCacheTTL is how long limits read from the store are trusted when
// Config.CacheTTL is zero.
const DefaultCacheTTL = 5 * time.Second

const (
	// maxChunk caps the quota one node reserves at once.
	maxChunk = 100
	// chunkDivisor: a node reserves a limit's 1/chunkDivisor at once.
	chunkDivisor = 50
	// pruneEvery is how often old counts are deleted; pruneAfter how long
	// after its window a count is kept (for keys show of a window just
	// ended, and clocks a little apart).
	pruneEvery = 10 * time.Minute
	pruneAfter = 24 * time.Hour
	// storeTimeout bounds a background prune.
	storeTimeout = 30 * time.Second
	// maxCachedScopes caps the cache of scopes' limits (one entry per key
	// or subaccount that sent within the cache TTL).
	maxCachedScopes = 100_000
)

// Config configures a Checker.
type Config struct {
	// CacheTTL is how long limits read from the store are used before
	// being read again; 0 means DefaultCacheTTL.
	CacheTTL time.Duration
	// Logger receives failures of background pruning; nil discards.
	Logger *slog.Logger
}

// Checker enforces the limits on this node. It is safe for concurrent use.
// Close it when done.
type Checker struct {
	st  store.Store
	ttl time.Duration
	log *slog.Logger
	now func() time.Time // time.Now; tests move it

	mu      sync.Mutex
	limits  map[store.LimitScope]cachedLimits
	buckets map[bucketKey]*bucket

	pruneMu   sync.Mutex
	lastPrune time.Time
	wg        sync.WaitGroup // background prunes
}

// cachedLimits are a scope's limits as read at some time.
type cachedLimits struct {
	l       store.Limits
	expires time.Time
}

// bucketKey names the local quota of one unit of one scope.
type bucketKey struct {
	scope store.LimitScope
	unit  Unit
}

// bucket is quota reserved from the store and not yet handed out, for one
// window.
type bucket struct {
	mu     sync.Mutex
	window time.Time // start of the window the tokens belong to
	tokens int64     // reserved in the store, not yet used by a message
	// full is the limit at which the store last answered "no more" in
	// this window (0: it did not): asking again is pointless until the
	// window ends or the limit changes.
	full int64
}

// New returns a Checker over st.
func New(st store.Store, cfg Config) *Checker {
	ttl := cfg.CacheTTL
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Checker{
		st:        st,
		ttl:       ttl,
		log:       log,
		now:       time.Now,
		limits:    make(map[store.LimitScope]cachedLimits),
		buckets:   make(map[bucketKey]*bucket),
		lastPrune: time.Now(),
	}
}

// Close waits for a background prune in progress.
func (c *Checker) Close() { c.wg.Wait() }

// Evict forgets the cached limits of scope, so that a change made on this
// node applies to the next message.
func (c *Checker) Evict(scope store.LimitScope) {
	c.mu.Lock()
	delete(c.limits, scope)
	c.mu.Unlock()
}

// limitsOf returns scope's limits, from the cache or the store.
func (c *Checker) limitsOf(ctx context.Context, scope store.LimitScope) (store.Limits, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.limits[scope]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.l, nil
	}
	l, err := c.st.GetLimits(ctx, scope)
	if err != nil {
		return store.Limits{}, err
	}
	c.mu.Lock()
	if len(c.limits) >= maxCachedScopes {
		c.sweep(now)
	}
	c.limits[scope] = cachedLimits{l: l, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return l, nil
}

// sweep drops expired cache entries, or an arbitrary one if none had
// expired, so the cache stays under maxCachedScopes. c.mu is held.
func (c *Checker) sweep(now time.Time) {
	n := len(c.limits)
	for sc, e := range c.limits {
		if !now.Before(e.expires) {
			delete(c.limits, sc)
		}
	}
	if len(c.limits) < n {
		return
	}
	for sc := range c.limits {
		delete(c.limits, sc)
		return
	}
}

// Reservation is the quota taken for one message. Release it if the
// message is not stored; keep it (do nothing) if it is.
type Reservation struct {
	c     *Checker
	taken []taken
	once  sync.Once
}

// taken is one token from one bucket.
type taken struct {
	b      *bucket
	window time.Time
}

// Release gives the message's quota back to this node, when the message
// was not stored after all. Safe on nil and more than once.
func (r *Reservation) Release() {
	if r == nil {
		return
	}
	r.once.Do(func() { r.c.giveBack(r.taken) })
}

// giveBack returns tokens to their buckets, if their window still runs.
func (c *Checker) giveBack(ts []taken) {
	for _, t := range ts {
		t.b.mu.Lock()
		if t.b.window.Equal(t.window) {
			t.b.tokens++
		}
		t.b.mu.Unlock()
	}
}

// Reserve takes the quota of one message sent with key keyID for
// subaccount sub (0: the master account, which has no subaccount limits).
// Over a limit, it returns an [*ExceededError] and takes nothing; a store
// failure is returned wrapped. With no limits set it costs two cache
// lookups.
func (c *Checker) Reserve(ctx context.Context, keyID string, sub int64) (*Reservation, error) {
	scopes := []store.LimitScope{KeyScope(keyID)}
	if sub > 0 {
		scopes = append(scopes, SubaccountScope(sub))
	}
	r := &Reservation{c: c}
	for _, scope := range scopes {
		l, err := c.limitsOf(ctx, scope)
		if err != nil {
			c.giveBack(r.taken)
			return nil, fmt.Errorf("sending limits: %w", err)
		}
		if l.IsZero() {
			continue
		}
		for _, u := range Units {
			limit := Get(l, u)
			if limit <= 0 {
				continue
			}
			t, err := c.take(ctx, scope, u, limit)
			if err != nil {
				c.giveBack(r.taken)
				return nil, err
			}
			r.taken = append(r.taken, t)
		}
	}
	return r, nil
}

// take hands out one token of scope's unit u, reserving a chunk from the
// store when this node has none left.
func (c *Checker) take(ctx context.Context, scope store.LimitScope, u Unit, limit int64) (taken, error) {
	k := bucketKey{scope: scope, unit: u}
	c.mu.Lock()
	b, ok := c.buckets[k]
	if !ok {
		b = &bucket{}
		c.buckets[k] = b
	}
	c.mu.Unlock()

	now := c.now()
	w := Window(u, now)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.window.Equal(w.Start) {
		// A new window: what was left of the last one is gone with it.
		b.window, b.tokens, b.full = w.Start, 0, 0
	}
	if b.tokens == 0 {
		if b.full == limit {
			return taken{}, &ExceededError{Scope: scope, Unit: u, Max: limit, Until: w.End}
		}
		want := min(maxChunk, max(1, limit/chunkDivisor))
		got, err := c.st.ReserveQuota(ctx, scope, w, want, limit)
		if err != nil {
			return taken{}, fmt.Errorf("sending limits: reserve %s quota: %w", u.Name(), err)
		}
		c.maybePrune(now)
		if got == 0 {
			b.full = limit
			return taken{}, &ExceededError{Scope: scope, Unit: u, Max: limit, Until: w.End}
		}
		b.tokens, b.full = got, 0
	}
	b.tokens--
	return taken{b: b, window: w.Start}, nil
}

// maybePrune deletes old counts in the background, at most every
// pruneEvery per node.
func (c *Checker) maybePrune(now time.Time) {
	c.pruneMu.Lock()
	if now.Sub(c.lastPrune) < pruneEvery {
		c.pruneMu.Unlock()
		return
	}
	c.lastPrune = now
	c.pruneMu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		if _, err := c.st.PruneQuota(ctx, now.Add(-pruneAfter)); err != nil {
			c.log.Warn("prune sending limit counts", "err", err)
		}
	}()
}

// Usage is the state of one limit of a scope, for keys show and the API.
type Usage struct {
	Unit  Unit
	Max   int64
	Used  int64 // messages counted in the current window, all nodes (see the package doc)
	Until time.Time
}

// Remaining is how many more messages the window allows.
func (u Usage) Remaining() int64 { return max(0, u.Max-u.Used) }

// Usages returns scope's limits and the current window of each, read from
// the store (not the cache). Used counts quota nodes reserved, which may
// run ahead of messages sent by up to one chunk per node.
func Usages(ctx context.Context, st store.Store, scope store.LimitScope, now time.Time) (store.Limits, []Usage, error) {
	l, err := st.GetLimits(ctx, scope)
	if err != nil {
		return l, nil, fmt.Errorf("sending limits: %w", err)
	}
	var (
		ws  []store.QuotaWindow
		out []Usage
	)
	for _, u := range Units {
		if m := Get(l, u); m > 0 {
			w := Window(u, now)
			ws = append(ws, w)
			out = append(out, Usage{Unit: u, Max: m, Until: w.End})
		}
	}
	if len(ws) == 0 {
		return l, nil, nil
	}
	used, err := st.QuotaUsed(ctx, scope, ws)
	if err != nil {
		return l, nil, fmt.Errorf("sending limits: %w", err)
	}
	for i := range out {
		out[i].Used = used[i]
	}
	return l, out, nil
}

// Save checks l and stores it as scope's limits (all zero: none), then
// makes c (nil: none) forget its cached copy so that the change applies
// to the next message on this node; other nodes apply it within their
// cache TTL.
func Save(ctx context.Context, st store.Store, c *Checker, scope store.LimitScope, l store.Limits) error {
	if err := Validate(l); err != nil {
		return err
	}
	if err := st.SetLimits(ctx, scope, l); err != nil {
		return fmt.Errorf("save sending limits: %w", err)
	}
	if c != nil {
		c.Evict(scope)
	}
	return nil
}
