package store

import (
	"context"
	"time"
)

// Kinds of [LimitScope].
const (
	// LimitKindKey: the limits of one API key; the scope id is the key id.
	LimitKindKey = "key"
	// LimitKindSubaccount: the limits of one subaccount, shared by all its
	// traffic; the scope id is the subaccount number in decimal.
	LimitKindSubaccount = "subaccount"
)

// LimitScope is what a sending limit applies to: a key or a subaccount.
type LimitScope struct {
	Kind string // LimitKindKey or LimitKindSubaccount
	ID   string // key id, or subaccount number in decimal
}

// Limits are the most messages a scope may send per calendar window; 0 is
// no limit. The windows themselves (and what counts as a message) are the
// limits package's business: the store keeps numbers.
type Limits struct {
	PerMinute int64
	PerHour   int64
	PerDay    int64
	PerMonth  int64
}

// IsZero reports whether l limits nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

// QuotaWindow names one counting window of a scope: its unit ("m", "h",
// "d" or "mo") and bounds.
type QuotaWindow struct {
	Unit  string
	Start time.Time
	End   time.Time
}

// LimitStore keeps sending limits and the counters that enforce them,
// shared by every node using the store.
type LimitStore interface {
	// SetLimits replaces the limits of scope; all-zero limits delete them.
	SetLimits(ctx context.Context, scope LimitScope, l Limits) error
	// GetLimits returns the limits of scope; zero Limits if none are set.
	GetLimits(ctx context.Context, scope LimitScope) (Limits, error)
	// LimitsOf returns the limits set on the scopes among scopes that have
	// any (for a page of keys).
	LimitsOf(ctx context.Context, scopes []LimitScope) (map[LimitScope]Limits, error)
	// ReserveQuota atomically adds up to want to the count of scope in
	// window w, never past ceiling, and returns how much it added (0 when
	// the count had reached ceiling). Concurrent calls from any node never
	// make the count exceed ceiling.
	ReserveQuota(ctx context.Context, scope LimitScope, w QuotaWindow, want, ceiling int64) (int64, error)
	// QuotaUsed returns the count of scope in each window (0 for a window
	// with no count), in the order of ws.
	QuotaUsed(ctx context.Context, scope LimitScope, ws []QuotaWindow) ([]int64, error)
	// PruneQuota deletes the counts of windows that ended before before,
	// and returns how many it deleted.
	PruneQuota(ctx context.Context, before time.Time) (int64, error)
}
