package store

import (
	"context"
	"time"
)

// Subaccount statuses (SparkPost's names).
const (
	// SubaccountActive: its keys work and its mail is relayed.
	SubaccountActive = "active"
	// SubaccountSuspended: its keys are refused and its queued mail is
	// held (not relayed) until it is active again.
	SubaccountSuspended = "suspended"
	// SubaccountTerminated: its keys are refused and its queued mail is
	// dropped with policy_rejection events. Final in practice, though the
	// store allows any change.
	SubaccountTerminated = "terminated"
)

// HeldUntil is the next attempt time of a recipient held because its
// subaccount is suspended: never due. Reactivation makes held recipients
// due at once.
var HeldUntil = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// SubaccountDroppedReply is the reason recorded for a queued recipient
// dropped because its subaccount was terminated.
const SubaccountDroppedReply = "554 5.7.1 subaccount terminated: message dropped"

// Subaccount is a tenant of the master account (SPEC §3). Id 0 is the
// master account itself and has no row.
type Subaccount struct {
	ID        int64  // assigned by CreateSubaccount, positive
	Name      string // admin's name for it
	Status    string // one of the Subaccount* statuses
	CreatedAt time.Time
	UpdatedAt time.Time
}

// SubaccountStore is the subaccount part of [Store].
type SubaccountStore interface {
	// CreateSubaccount stores s with its times. A zero s.ID gets the next
	// free id; a positive one is kept (ErrExists if taken), so that an
	// account moving from SparkPost keeps its subaccount ids. An empty
	// Status is stored as active.
	CreateSubaccount(ctx context.Context, s *Subaccount) error
	// GetSubaccount returns the subaccount; ErrNotFound if there is none.
	GetSubaccount(ctx context.Context, id int64) (*Subaccount, error)
	// ListSubaccounts returns every subaccount, by id.
	ListSubaccounts(ctx context.Context) ([]*Subaccount, error)
	// UpdateSubaccount writes s's name and status and sets UpdatedAt;
	// ErrNotFound if there is none. In the same transaction it applies the
	// status to the subaccount's queued mail, as [Store.ApplySubaccountStatus]
	// does, and returns how many recipients that held, released or dropped.
	UpdateSubaccount(ctx context.Context, s *Subaccount) (int64, error)
	// ApplySubaccountStatus brings the queued and deferred recipients of
	// every subaccount in line with its status: those of suspended
	// subaccounts are held (NextAttempt = HeldUntil), held ones of active
	// subaccounts become due now, and those of terminated subaccounts
	// become bounced with SubaccountDroppedReply and a policy_rejection
	// event each (no DSN). Recipients leased to a relay are left alone
	// until their lease ends. It returns how many recipients changed.
	// The relay calls it every minute, for mail accepted by a session
	// that authenticated just before the change.
	ApplySubaccountStatus(ctx context.Context) (int64, error)
}
