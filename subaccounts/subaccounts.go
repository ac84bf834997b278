// Package subaccounts manages subaccounts as entities (SPEC §3): tenants
// of the master account, each with a name and a status, active, suspended
// or terminated. The CLI (smtpgw subaccounts) and the HTTP API
// (/api/v1/subaccounts) both go through a [Service], so the rules live
// here only:
//
//   - Ids are positive and never reused; 0 is the master account, which
//     has no row. Create may keep a given id (an account moving from
//     SparkPost keeps its ids) or take the next free one.
//   - A name is required, at most MaxNameLen characters.
//   - Create may set up the subaccount's first API key ([CreateParams]
//     SetupKey, with auth's rules for label, grants and allowed IPs); the
//     key is returned once, as every key.
//   - Status changes: active ⇄ suspended, and either to terminated, which
//     is final. While suspended, the subaccount's keys are refused at AUTH
//     and in the API (535 5.7.8, 401), and its queued mail is held: not
//     relayed, still counted in the queue, relayed once it is active again
//     (or expired if it outlived relay.max_queue_lifetime). Once
//     terminated, its keys are refused the same way, no key can be created
//     for it, and its queued mail is dropped: each recipient becomes
//     bounced with a policy_rejection event and no DSN. The change applies
//     at once on the node that makes it (the Verifier's cache entry is
//     evicted) and within auth.cache_ttl on the others; mail accepted in
//     that window is held or dropped by the relay's next maintenance pass
//     (every minute).
//
// Every change goes through one function per operation ([Service.Create],
// [Service.Update]), the places to record it (audit log).
//
// Errors the caller must fix are [*ParamError] values (errors.Is
// [ErrInvalid]) naming the field; a subaccount that does not exist is
// store.ErrNotFound (wrapped); anything else is a store fault.
package subaccounts

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
)

// MaxNameLen is the longest subaccount name accepted, in characters
// (SparkPost's limit).
const MaxNameLen = 1024

// ErrInvalid is matched by every [*ParamError].
var ErrInvalid = errors.New("invalid subaccount parameter")

// Field names of [ParamError].
const (
	FieldID     = "id"
	FieldName   = "name"
	FieldStatus = "status"
)

// ParamError is a refused parameter: Field names it, Err says what is
// wrong and how to fix it.
type ParamError struct {
	Field string
	Err   error
}

func (e *ParamError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *ParamError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ParamError) Is(target error) bool { return target == ErrInvalid }

func paramErrorf(field, format string, args ...any) error {
	return &ParamError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Evicter drops a subaccount's cached status (auth.Verifier does), so a
// change applies at once on this node.
type Evicter interface {
	EvictSubaccount(id int64)
}

// Service performs the subaccount operations.
type Service struct {
	st    store.Store
	keys  *auth.Manager
	evict Evicter // nil: none (CLI)
}

// New returns a Service on st that creates setup keys with keys and
// evicts changed subaccounts from evict (nil: no cache on this process).
func New(st store.Store, keys *auth.Manager, evict Evicter) *Service {
	return &Service{st: st, keys: keys, evict: evict}
}

// CreateParams describes a subaccount to create.
type CreateParams struct {
	// ID keeps a given id (positive); 0 takes the next free one.
	ID int64
	// Name is required.
	Name string
	// SetupKey creates the subaccount's first API key with the Key*
	// fields (SparkPost's setup_api_key).
	SetupKey bool
	// KeyLabel, KeyGrants and KeyValidIPs describe the key (auth's rules).
	KeyLabel    string
	KeyGrants   []string
	KeyValidIPs []string
}

// Created is the result of Create: the subaccount and, when SetupKey was
// asked, its key (shown once) and the key's record.
type Created struct {
	Subaccount *store.Subaccount
	Key        string
	KeyRecord  *store.Key
}

// Create makes a subaccount and, if asked, its first key. The key's
// parameters are checked before anything is stored; should storing the
// key fail nonetheless, the subaccount stays, without a key (the error
// says so).
func (s *Service) Create(ctx context.Context, p CreateParams) (*Created, error) {
	name, err := checkName(p.Name)
	if err != nil {
		return nil, fmt.Errorf("create subaccount: %w", err)
	}
	if p.ID < 0 {
		return nil, fmt.Errorf("create subaccount: %w", paramErrorf(FieldID, "%d is not a subaccount id (a positive number, or none for the next)", p.ID))
	}
	kp := auth.CreateParams{Label: p.KeyLabel, Grants: p.KeyGrants, AllowedIPs: p.KeyValidIPs}
	if p.SetupKey {
		// Checked as for a key of any subaccount (id 1 stands for the one
		// not created yet): master-only grants are refused here.
		probe := kp
		probe.Subaccount = 1
		if err := s.keys.Check(probe); err != nil {
			return nil, fmt.Errorf("create subaccount: key: %w", err)
		}
	}
	sa := &store.Subaccount{ID: p.ID, Name: name, Status: store.SubaccountActive}
	if err := s.st.CreateSubaccount(ctx, sa); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("create subaccount: %w", paramErrorf(FieldID, "subaccount %d already exists: leave the id out to take the next", p.ID))
		}
		return nil, fmt.Errorf("create subaccount: %w", err)
	}
	out := &Created{Subaccount: sa}
	if p.SetupKey {
		kp.Subaccount = sa.ID
		key, k, err := s.keys.Create(ctx, kp)
		if err != nil {
			return out, fmt.Errorf("subaccount %d created, but not its key: %w", sa.ID, err)
		}
		out.Key, out.KeyRecord = key, k
	}
	return out, nil
}

// UpdateParams describes changes; nil fields keep their value.
type UpdateParams struct {
	Name   *string
	Status *string
}

// Update changes a subaccount's name and status and applies the status to
// its keys and queued mail (see the package doc). It returns the
// subaccount as stored and how many queued recipients were held,
// released or dropped.
func (s *Service) Update(ctx context.Context, id int64, p UpdateParams) (*store.Subaccount, int64, error) {
	if p.Name == nil && p.Status == nil {
		return nil, 0, fmt.Errorf("update subaccount %d: %w", id, paramErrorf(FieldName, "nothing to change: give a name or a status"))
	}
	sa, err := s.Get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if p.Name != nil {
		if sa.Name, err = checkName(*p.Name); err != nil {
			return nil, 0, fmt.Errorf("update subaccount %d: %w", id, err)
		}
	}
	if p.Status != nil {
		st, err := checkStatus(*p.Status)
		if err != nil {
			return nil, 0, fmt.Errorf("update subaccount %d: %w", id, err)
		}
		if sa.Status == store.SubaccountTerminated && st != store.SubaccountTerminated {
			return nil, 0, fmt.Errorf("update subaccount %d: %w", id,
				paramErrorf(FieldStatus, "subaccount %d is terminated, which is final: create a new subaccount", id))
		}
		sa.Status = st
	}
	n, err := s.st.UpdateSubaccount(ctx, sa)
	if s.evict != nil {
		s.evict.EvictSubaccount(id) // even on error: the store may have applied it
	}
	if err != nil {
		return nil, 0, fmt.Errorf("update subaccount %d: %w", id, err)
	}
	return sa, n, nil
}

// Get returns the subaccount; store.ErrNotFound (wrapped) if there is none.
func (s *Service) Get(ctx context.Context, id int64) (*store.Subaccount, error) {
	if id <= 0 {
		return nil, fmt.Errorf("get subaccount %d: %w", id, store.ErrNotFound)
	}
	sa, err := s.st.GetSubaccount(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("get subaccount: %w", err)
	}
	return sa, nil
}

// List returns every subaccount, by id.
func (s *Service) List(ctx context.Context) ([]*store.Subaccount, error) {
	out, err := s.st.ListSubaccounts(ctx)
	if err != nil {
		return nil, fmt.Errorf("list subaccounts: %w", err)
	}
	return out, nil
}

func checkName(name string) (string, error) {
	name = strings.TrimSpace(name)
	switch {
	case name == "":
		return "", paramErrorf(FieldName, "empty: name the subaccount after its tenant, e.g. \"Acme Corp\"")
	case !utf8.ValidString(name):
		return "", paramErrorf(FieldName, "not valid UTF-8")
	case utf8.RuneCountInString(name) > MaxNameLen:
		return "", paramErrorf(FieldName, "longer than %d characters", MaxNameLen)
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", paramErrorf(FieldName, "control characters are not allowed")
	}
	return name, nil
}

// checkStatus checks a status name (active, suspended, terminated).
func checkStatus(s string) (string, error) {
	switch st := strings.ToLower(strings.TrimSpace(s)); st {
	case store.SubaccountActive, store.SubaccountSuspended, store.SubaccountTerminated:
		return st, nil
	}
	return "", paramErrorf(FieldStatus, "%q is not a status: use active, suspended or terminated", s)
}
