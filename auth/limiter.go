package auth

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimiterEntries caps the number of client addresses a FailureLimiter
// tracks.
const maxLimiterEntries = 100_000

// FailureLimiter throttles failed AUTH attempts per client address
// (smtp.max_auth_failures per smtp.auth_failure_window, SPEC §4). Each
// address has a token bucket of max tokens refilled at max per window: an
// address is blocked once it failed max times in a row faster than the
// refill, and regains one attempt every window/max, all of them after a
// whole window without failure.
//
// IPv6 clients are counted per /64, the block a single site usually gets,
// so an attacker cannot escape the limit by changing addresses within it.
//
// Memory is bounded: idle entries (full buckets) are swept at most once per
// window, and at most 100,000 addresses are tracked; past that, an
// arbitrary entry is dropped for each new one (an attacker with that many
// addresses can make the limiter forget some of them, not grow it). It is safe for concurrent
// use.
type FailureLimiter struct {
	max        int           // failures allowed per window; <= 0 disables
	window     time.Duration // the period max failures are counted over
	every      rate.Limit    // refill rate: max per window
	maxEntries int           // maxLimiterEntries; tests lower it

	mu        sync.Mutex
	clients   map[netip.Addr]*rate.Limiter // by clientKey
	lastSweep time.Time                    // when idle entries were last dropped
}

// NewFailureLimiter returns a limiter blocking an address after max failures
// within window. max <= 0 disables it (nothing is ever blocked); a
// non-positive window means 5 minutes.
func NewFailureLimiter(max int, window time.Duration) *FailureLimiter {
	if window <= 0 {
		window = 5 * time.Minute
	}
	l := &FailureLimiter{
		max:        max,
		window:     window,
		maxEntries: maxLimiterEntries,
		clients:    make(map[netip.Addr]*rate.Limiter),
		lastSweep:  time.Now(),
	}
	if max > 0 {
		l.every = rate.Limit(float64(max) / window.Seconds())
	}
	return l
}

// clientKey is the map key of an address: IPv4 as is, IPv6 by its /64.
func clientKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// Blocked reports whether ip has used up its failures: max failures within
// the window.
func (l *FailureLimiter) Blocked(ip netip.Addr) bool {
	if l.max <= 0 {
		return false
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maybeSweep(now)
	lim, ok := l.clients[clientKey(ip)]
	return ok && lim.TokensAt(now) < 1
}

// RetryAfter returns how long until ip may try again: 0 if it is not
// blocked, else the time until one failure's worth is refilled.
func (l *FailureLimiter) RetryAfter(ip netip.Addr) time.Duration {
	if l.max <= 0 {
		return 0
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.clients[clientKey(ip)]
	if !ok {
		return 0
	}
	missing := 1 - lim.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	return time.Duration(missing / float64(l.every) * float64(time.Second))
}

// Fail records one failed attempt from ip and reports whether ip is now
// blocked (this was its max-th failure within the window, or a later one).
func (l *FailureLimiter) Fail(ip netip.Addr) (blocked bool) {
	if l.max <= 0 {
		return false
	}
	now := time.Now()
	k := clientKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maybeSweep(now)
	lim, ok := l.clients[k]
	if !ok {
		// Full: drop an arbitrary entry rather than sweep here, which
		// would cost a pass over every entry for each new address.
		for a := range l.clients {
			if len(l.clients) < l.maxEntries {
				break
			}
			delete(l.clients, a)
		}
		lim = rate.NewLimiter(l.every, l.max)
		l.clients[k] = lim
	}
	lim.AllowN(now, 1)
	return lim.TokensAt(now) < 1
}

// maybeSweep sweeps when the last sweep is a window ago. l.mu is held.
func (l *FailureLimiter) maybeSweep(now time.Time) {
	if now.Sub(l.lastSweep) >= l.window {
		l.sweep(now)
	}
}

// sweep drops the addresses whose bucket is full again: they failed
// nothing that still counts. l.mu is held.
func (l *FailureLimiter) sweep(now time.Time) {
	l.lastSweep = now
	for a, lim := range l.clients {
		if lim.TokensAt(now) >= float64(l.max) {
			delete(l.clients, a)
		}
	}
}

// Len returns the number of addresses tracked (for tests and metrics).
func (l *FailureLimiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}
