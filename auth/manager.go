package auth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// Manager performs the admin operations on API keys (CLI and HTTP API). It
// validates input before it reaches the store and, when it has a Verifier,
// evicts changed keys from its cache so changes apply at once on this node.
//
// Input the admin must fix is refused with a [*ParamError] (errors.Is
// [ErrInvalid]) naming the parameter; the rules are those of the fields of
// [CreateParams]. Any other error is a missing key (store.ErrNotFound) or a
// store fault.
type Manager struct {
	st store.Store
	v  *Verifier // nil: no cache to evict (CLI)
}

// NewManager returns a Manager working on st. v may be nil (the CLI, which
// runs no Verifier); other nodes' caches expire after their cache TTL.
func NewManager(st store.Store, v *Verifier) *Manager {
	return &Manager{st: st, v: v}
}

// CreateParams describes a key to create.
type CreateParams struct {
	// Label is the admin's name for the key: required, at most MaxLabelLen
	// characters; surrounding white space is trimmed.
	Label string
	// Grants are SparkPost grant names; at least one (see ValidateGrants).
	// metrics/view is refused for a subaccount key: the metrics cover every
	// account.
	Grants []string
	// Subaccount is the key's subaccount; 0 is the master account, negative
	// ids are refused.
	Subaccount int64
	// AllowedIPs are the addresses or CIDR prefixes the key may be used
	// from (see ParseAllowedIPs); empty allows any address.
	AllowedIPs []string
	// ExpiresAt, when not zero, is when the key stops being accepted; it
	// must be in the future (see ParseExpiry).
	ExpiresAt time.Time
}

// UpdateParams describes changes to a key; nil or false fields keep the
// current value.
type UpdateParams struct {
	// Label, when not nil, replaces the label (same rules as CreateParams).
	Label *string
	// Grants, when not nil, replace the grants.
	Grants []string
	// Subaccount, when not nil, moves the key to that subaccount (0: master).
	// A key holding metrics/view cannot move to a subaccount unless Grants
	// drops it.
	Subaccount *int64
	// AllowedIPs, when not empty, replace the allowed IPs.
	AllowedIPs []string
	// ClearAllowedIPs allows any address again. It cannot be combined with
	// AllowedIPs.
	ClearAllowedIPs bool
	// ExpiresAt, when not zero, sets the expiry time; it must be in the
	// future.
	ExpiresAt time.Time
	// ClearExpiry makes the key never expire. It cannot be combined with
	// ExpiresAt.
	ClearExpiry bool
}

// Create makes a new key and stores it. It returns the key itself, to be
// shown once and never again, and the stored record (without the key).
func (m *Manager) Create(ctx context.Context, p CreateParams) (string, *store.Key, error) {
	label, grants, ips, err := checkCreate(p)
	if err == nil && !p.ExpiresAt.IsZero() {
		err = checkExpiry(p.ExpiresAt, time.Now())
	}
	if err != nil {
		return "", nil, fmt.Errorf("create key: %w", err)
	}
	if err := m.subaccountExists(ctx, p.Subaccount); err != nil {
		return "", nil, fmt.Errorf("create key: %w", err)
	}
	return m.create(ctx, &store.Key{
		Label:      label,
		Grants:     grants,
		Subaccount: p.Subaccount,
		AllowedIPs: ips,
		ExpiresAt:  utcMicro(p.ExpiresAt),
	})
}

// create stores a new key with the fields of tmpl and a fresh secret.
func (m *Manager) create(ctx context.Context, tmpl *store.Key) (string, *store.Key, error) {
	// A duplicate id or hash is all but impossible (64 and 160 random
	// bits); retry rather than fail if it happens.
	for attempt := 0; ; attempt++ {
		key, err := GenerateKey()
		if err != nil {
			return "", nil, fmt.Errorf("create key: %w", err)
		}
		k := &store.Key{
			ID:         store.NewKeyID(),
			Label:      tmpl.Label,
			Grants:     tmpl.Grants,
			ShortKey:   key[:ShortKeyLen],
			Hash:       HashKey(key),
			Subaccount: tmpl.Subaccount,
			AllowedIPs: tmpl.AllowedIPs,
			ExpiresAt:  tmpl.ExpiresAt,
		}
		err = m.st.CreateKey(ctx, k)
		if errors.Is(err, store.ErrExists) && attempt < 2 {
			continue
		}
		if err != nil {
			return "", nil, fmt.Errorf("create key: %w", err)
		}
		if m.v != nil {
			m.v.forget(k.Hash)
		}
		return key, k, nil
	}
}

// checkCreate checks p and returns its label, grants and allowed IPs as
// they are stored.
func checkCreate(p CreateParams) (string, []string, []netip.Prefix, error) {
	label, err := checkLabel(p.Label)
	if err != nil {
		return "", nil, nil, err
	}
	grants, err := checkGrants(p.Grants)
	if err != nil {
		return "", nil, nil, err
	}
	if err := checkSubaccount(p.Subaccount); err != nil {
		return "", nil, nil, err
	}
	if err := checkMasterOnly(grants, p.Subaccount, FieldGrants); err != nil {
		return "", nil, nil, err
	}
	ips, err := ParseAllowedIPs(p.AllowedIPs)
	if err != nil {
		return "", nil, nil, err
	}
	return label, grants, ips, nil
}

// Update changes an active key and evicts it from the Verifier's cache. It
// returns the key as stored; store.ErrNotFound (wrapped) if there is no
// active key with that id.
func (m *Manager) Update(ctx context.Context, id string, p UpdateParams) (*store.Key, error) {
	// Check what can be checked alone before asking the store.
	var (
		label  string
		grants []string
		ips    []netip.Prefix
		err    error
	)
	if p.Label != nil {
		if label, err = checkLabel(*p.Label); err != nil {
			return nil, fmt.Errorf("update key %s: %w", id, err)
		}
	}
	if p.Grants != nil {
		if grants, err = checkGrants(p.Grants); err != nil {
			return nil, fmt.Errorf("update key %s: %w", id, err)
		}
	}
	if p.Subaccount != nil {
		if err := checkSubaccount(*p.Subaccount); err != nil {
			return nil, fmt.Errorf("update key %s: %w", id, err)
		}
	}
	if p.ClearAllowedIPs && len(p.AllowedIPs) > 0 {
		return nil, fmt.Errorf("update key %s: %w", id,
			paramErrorf(FieldAllowedIPs, "both given and cleared: give one"))
	}
	if len(p.AllowedIPs) > 0 {
		if ips, err = ParseAllowedIPs(p.AllowedIPs); err != nil {
			return nil, fmt.Errorf("update key %s: %w", id, err)
		}
	}
	if p.ClearExpiry && !p.ExpiresAt.IsZero() {
		return nil, fmt.Errorf("update key %s: %w", id,
			paramErrorf(FieldExpiresAt, "both given and cleared: give one"))
	}
	if !p.ExpiresAt.IsZero() {
		if err := checkExpiry(p.ExpiresAt, time.Now()); err != nil {
			return nil, fmt.Errorf("update key %s: %w", id, err)
		}
	}

	if p.Subaccount != nil {
		if err := m.subaccountExists(ctx, *p.Subaccount); err != nil {
			return nil, fmt.Errorf("update key %s: %w", id, err)
		}
	}
	k, err := m.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("update key: %w", err)
	}
	if p.Label != nil {
		k.Label = label
	}
	if p.Grants != nil {
		k.Grants = grants
	}
	if p.Subaccount != nil {
		k.Subaccount = *p.Subaccount
	}
	if len(p.AllowedIPs) > 0 {
		k.AllowedIPs = ips
	}
	if p.ClearAllowedIPs {
		k.AllowedIPs = nil
	}
	if !p.ExpiresAt.IsZero() {
		k.ExpiresAt = utcMicro(p.ExpiresAt)
	}
	if p.ClearExpiry {
		k.ExpiresAt = time.Time{}
	}
	// Only a change of grants or subaccount is checked against the other:
	// a label change leaves an existing key as it is.
	switch {
	case p.Grants != nil:
		err = checkMasterOnly(k.Grants, k.Subaccount, FieldGrants)
	case p.Subaccount != nil:
		err = checkMasterOnly(k.Grants, k.Subaccount, FieldSubaccount)
	}
	if err != nil {
		return nil, fmt.Errorf("update key %s: %w", id, err)
	}
	err = m.st.UpdateKey(ctx, k)
	m.evict(id) // even on error: the store may have applied it
	if err != nil {
		return nil, fmt.Errorf("update key %s: %w", id, err)
	}
	return k, nil
}

// Delete revokes the key with that id and evicts it from the Verifier's
// cache: this node refuses it at once, other nodes within their cache TTL.
// The record is kept (so AUTH can log "revoked key") but no longer listed.
// It returns store.ErrNotFound (wrapped) if there is no active key with
// that id.
func (m *Manager) Delete(ctx context.Context, id string) error {
	err := m.st.RevokeKey(ctx, id)
	m.evict(id)
	if err != nil {
		return fmt.Errorf("delete key %s: %w", id, err)
	}
	return nil
}

// Get returns the active key with that id; store.ErrNotFound (wrapped) if
// there is none or it was deleted.
func (m *Manager) Get(ctx context.Context, id string) (*store.Key, error) {
	k, err := m.st.GetKey(ctx, id)
	if err == nil && !k.RevokedAt.IsZero() {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get key %s: %w", id, err)
	}
	return k, nil
}

// List returns one page of the active keys matching f, oldest first, and
// the cursor of the next page ("" after the last); see store.KeyFilter. A
// bad cursor is a [*ParamError] for FieldCursor.
func (m *Manager) List(ctx context.Context, f store.KeyFilter) ([]*store.Key, string, error) {
	keys, next, err := m.st.ListKeys(ctx, f)
	if errors.Is(err, store.ErrBadCursor) {
		err = &ParamError{Field: FieldCursor, Err: err}
	}
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	return keys, next, nil
}

// DefaultOverlap is how long a rotated key keeps working when Rotate is
// given no overlap.
const DefaultOverlap = 24 * time.Hour

// Rotate replaces the active key id by a new key with the same label,
// grants, subaccount, allowed IPs and sending limits (no expiry), and makes
// the old key expire after overlap (or keeps its expiry if that comes
// sooner). An overlap of 0 expires the old key at once; a negative one is
// refused. It returns the new key itself (to be shown once), the new key
// as stored and the old one as updated.
func (m *Manager) Rotate(ctx context.Context, id string, overlap time.Duration) (string, *store.Key, *store.Key, error) {
	if overlap < 0 {
		return "", nil, nil, fmt.Errorf("rotate key %s: %w", id,
			paramErrorf(FieldOverlap, "%s is negative: give how long the old key keeps working, e.g. 24h (0: stop it now)", overlap))
	}
	old, err := m.Get(ctx, id)
	if err != nil {
		return "", nil, nil, fmt.Errorf("rotate key: %w", err)
	}
	lim, err := m.st.GetLimits(ctx, store.LimitScope{Kind: store.LimitKindKey, ID: old.ID})
	if err != nil {
		return "", nil, nil, fmt.Errorf("rotate key %s: %w", id, err)
	}
	key, k, err := m.create(ctx, &store.Key{
		Label:      old.Label,
		Grants:     old.Grants,
		Subaccount: old.Subaccount,
		AllowedIPs: old.AllowedIPs,
	})
	if err != nil {
		return "", nil, nil, fmt.Errorf("rotate key %s: %w", id, err)
	}
	if !lim.IsZero() {
		if err := m.st.SetLimits(ctx, store.LimitScope{Kind: store.LimitKindKey, ID: k.ID}, lim); err != nil {
			return "", nil, nil, fmt.Errorf("rotate key %s: new key %s made, copying its limits failed (set them with keys update): %w", id, k.ID, err)
		}
	}
	until := utcMicro(time.Now().Add(overlap))
	if old.ExpiresAt.IsZero() || until.Before(old.ExpiresAt) {
		old.ExpiresAt = until
	}
	err = m.st.UpdateKey(ctx, old)
	m.evict(old.ID)
	if err != nil {
		return "", nil, nil, fmt.Errorf("rotate key %s: new key %s made, but the old key's expiry was not set (set it with keys update --expires): %w", id, k.ID, err)
	}
	return key, k, old, nil
}

// utcMicro is t in UTC at the stores' precision (microseconds).
func utcMicro(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func (m *Manager) evict(id string) {
	if m.v != nil {
		m.v.Evict(id)
	}
}
