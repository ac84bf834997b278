package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Write health, for readiness.
//
// A database that answers SELECT 1 may still refuse every write: a full
// disk, a read-only file system, a standby after a fail-over. So the group
// committers (Enqueue and Finish) record whether their latest transaction
// failed for the database's sake (ErrUnavailable, ErrOutcomeUnknown), and
// while it did, [Store.Ping] fails. It makes a small write of its own (the
// write_probe table) at most once per probeInterval, and Ping succeeds again
// as soon as a write commits, its own or the committers'. A write refused
// for one message's sake (a duplicate id) says nothing of the database and
// changes nothing.

// probeInterval is the least time between two probe writes.
const probeInterval = time.Second

// health is the write health of one store.
type health struct {
	mu        sync.Mutex
	failErr   error     // the latest write's failure; nil once a write committed
	since     time.Time // when the writes began failing
	lastProbe time.Time // when Ping last tried a write
}

// observe records the result of a write.
func (h *health) observe(err error) {
	if err != nil && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrOutcomeUnknown) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.failErr, h.since = nil, time.Time{}
		return
	}
	if h.failErr == nil {
		h.since = time.Now()
	}
	h.failErr = err
}

// check returns nil if the latest write committed. Otherwise it runs probe
// (a write), at most once per probeInterval, and returns nil if it
// committed, or else an error saying since when writes fail.
func (h *health) check(ctx context.Context, probe func(context.Context) error) error {
	h.mu.Lock()
	if h.failErr == nil {
		h.mu.Unlock()
		return nil
	}
	run := time.Since(h.lastProbe) >= probeInterval
	if run {
		h.lastProbe = time.Now()
	}
	h.mu.Unlock()
	if run {
		err := probe(ctx)
		if err == nil {
			h.observe(nil)
			return nil
		}
		if ctx.Err() == nil {
			// A probe cut short by the caller's deadline proves nothing.
			h.observe(fmt.Errorf("%w: %w", ErrUnavailable, err))
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failErr == nil {
		return nil
	}
	return fmt.Errorf("writes failing since %s: %w", h.since.UTC().Format(time.RFC3339), h.failErr)
}
