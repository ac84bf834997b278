package smtpd

import (
	"math"
	"sync"

	"golang.org/x/time/rate"
)

// keyLimiter limits the messages each API key may inject on this node
// (SPEC §4: 451 4.7.1). A token bucket per key id; keys are few (they are
// made by admins), so entries are never evicted.
type keyLimiter struct {
	limit rate.Limit
	burst int

	mu   sync.Mutex
	keys map[string]*rate.Limiter
}

// newKeyLimiter returns nil (no limit) when perSecond <= 0. burst <= 0
// means the rate rounded up, at least 1.
func newKeyLimiter(perSecond float64, burst int) *keyLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return &keyLimiter{limit: rate.Limit(perSecond), burst: burst, keys: make(map[string]*rate.Limiter)}
}

// allow takes one message from keyID's bucket; a nil limiter allows all.
func (l *keyLimiter) allow(keyID string) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	lim, ok := l.keys[keyID]
	if !ok {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.keys[keyID] = lim
	}
	l.mu.Unlock()
	return lim.Allow()
}
