package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// Reasons a key of a subaccount, or a master key asking to send for one,
// is refused. [Verifier] returns them inside an [*Error].
var (
	// ErrUnknownSubaccount: the subaccount does not exist.
	ErrUnknownSubaccount = errors.New("unknown subaccount")
	// ErrSubaccountInactive: the subaccount is suspended or terminated.
	ErrSubaccountInactive = errors.New("subaccount not active")
)

// subCache caches subaccount statuses for the Verifier with its key TTL,
// so that a suspension applies within auth.cache_ttl on every node. The
// zero value is ready to use.
type subCache struct {
	mu sync.Mutex
	m  map[int64]subEntry
}

type subEntry struct {
	status  string // "" : no such subaccount
	expires time.Time
}

// CheckSubaccount returns nil if id is the master account (0) or an
// active subaccount. Otherwise an [*Error] wrapping ErrUnknownSubaccount
// or ErrSubaccountInactive; a store failure is returned wrapped (not as
// *Error), for a temporary failure.
func (v *Verifier) CheckSubaccount(ctx context.Context, id int64) error {
	if id == 0 {
		return nil
	}
	status, err := v.subaccountStatus(ctx, id)
	if err != nil {
		return fmt.Errorf("check subaccount %d: %w", id, err)
	}
	switch status {
	case store.SubaccountActive:
		return nil
	case "":
		return &Error{Reason: ErrUnknownSubaccount, Subaccount: id}
	}
	return &Error{Reason: ErrSubaccountInactive, Subaccount: id, Status: status}
}

// subaccountStatus returns the status of subaccount id, "" if there is
// none, from the cache or the store.
func (v *Verifier) subaccountStatus(ctx context.Context, id int64) (string, error) {
	now := time.Now()
	if v.ttl > 0 {
		v.subs.mu.Lock()
		e, ok := v.subs.m[id]
		v.subs.mu.Unlock()
		if ok && now.Before(e.expires) {
			return e.status, nil
		}
	}
	sa, err := v.st.GetSubaccount(ctx, id)
	status := ""
	switch {
	case err == nil:
		status = sa.Status
	case !errors.Is(err, store.ErrNotFound):
		return "", err
	}
	if v.ttl > 0 {
		v.subs.mu.Lock()
		if v.subs.m == nil || len(v.subs.m) >= maxMissingEntries {
			v.subs.m = make(map[int64]subEntry)
		}
		v.subs.m[id] = subEntry{status: status, expires: now.Add(v.ttl)}
		v.subs.mu.Unlock()
	}
	return status, nil
}

// EvictSubaccount drops the cached status of subaccount id, so that a
// change to it applies to the next verification on this node.
func (v *Verifier) EvictSubaccount(id int64) {
	v.subs.mu.Lock()
	delete(v.subs.m, id)
	v.subs.mu.Unlock()
}

// activeSubaccount refuses a verified identity whose subaccount is not
// active (the result of check is passed through otherwise).
func (v *Verifier) activeSubaccount(ctx context.Context, id *Identity, err error) (*Identity, error) {
	if err != nil || id.Subaccount == 0 {
		return id, err
	}
	if err := v.CheckSubaccount(ctx, id.Subaccount); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.KeyID, e.ShortKey = id.KeyID, id.ShortKey
		}
		return nil, err
	}
	return id, nil
}

// subaccountExists refuses (as a [*ParamError] for FieldSubaccount) a key
// for a subaccount that does not exist or is terminated.
func (m *Manager) subaccountExists(ctx context.Context, id int64) error {
	if id == 0 {
		return nil
	}
	sa, err := m.st.GetSubaccount(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return paramErrorf(FieldSubaccount, "no subaccount %d: create it first (smtpgw subaccounts create, or POST /api/v1/subaccounts)", id)
	case err != nil:
		return err
	case sa.Status == store.SubaccountTerminated:
		return paramErrorf(FieldSubaccount, "subaccount %d is terminated: it can have no keys", id)
	}
	return nil
}
