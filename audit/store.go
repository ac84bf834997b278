package audit

import (
	"context"
	"log/slog"

	"github.com/smtpgw/smtpgw/store"
)

// Wrap returns st with every write of an administered object recorded (see
// the package doc). Everything else passes through unchanged. Failures to
// record are logged to log (nil: discarded).
//
// Give the wrapped store to the frontends (CLI, API, console) only: the
// relay and the SMTP server write through st itself.
func Wrap(st store.Store, log *slog.Logger) store.Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &auditedStore{Store: st, log: log}
}

// auditedStore records the writes of administered objects.
type auditedStore struct {
	store.Store
	log *slog.Logger
}

func (s *auditedStore) record(ctx context.Context, c Change) {
	Record(ctx, s.Store, s.log, c)
}

// CreateKey implements store.Store.
func (s *auditedStore) CreateKey(ctx context.Context, k *store.Key) error {
	if err := s.Store.CreateKey(ctx, k); err != nil {
		return err
	}
	s.record(ctx, Change{Action: ActionCreate, ObjectType: ObjectKey, ObjectID: k.ID,
		Subaccount: k.Subaccount, After: KeyView(k)})
	return nil
}

// UpdateKey implements store.Store.
func (s *auditedStore) UpdateKey(ctx context.Context, k *store.Key) error {
	before := s.key(ctx, k.ID)
	if err := s.Store.UpdateKey(ctx, k); err != nil {
		return err
	}
	after := s.key(ctx, k.ID)
	if after == nil {
		after = KeyView(k)
	}
	s.record(ctx, Change{Action: ActionUpdate, ObjectType: ObjectKey, ObjectID: k.ID,
		Subaccount: k.Subaccount, Before: before, After: after})
	return nil
}

// RevokeKey implements store.Store.
func (s *auditedStore) RevokeKey(ctx context.Context, id string) error {
	before := s.key(ctx, id)
	if err := s.Store.RevokeKey(ctx, id); err != nil {
		return err
	}
	var sub int64
	if before != nil {
		sub = before.Subaccount
	}
	s.record(ctx, Change{Action: ActionDelete, ObjectType: ObjectKey, ObjectID: id,
		Subaccount: sub, Before: before})
	return nil
}

// key is the view of key id as stored now; nil if it cannot be read.
func (s *auditedStore) key(ctx context.Context, id string) *Key {
	k, err := s.Store.GetKey(ctx, id)
	if err != nil {
		return nil
	}
	return KeyView(k)
}

// CreateDomain implements store.Store.
func (s *auditedStore) CreateDomain(ctx context.Context, d *store.Domain) error {
	if err := s.Store.CreateDomain(ctx, d); err != nil {
		return err
	}
	s.record(ctx, Change{Action: ActionCreate, ObjectType: ObjectDomain, ObjectID: d.Name,
		Subaccount: d.Subaccount, After: DomainView(d)})
	return nil
}

// DeleteDomain implements store.Store.
func (s *auditedStore) DeleteDomain(ctx context.Context, name string) error {
	var before *Domain
	if d, err := s.Store.GetDomain(ctx, name); err == nil {
		before = DomainView(d)
		name = d.Name
	}
	if err := s.Store.DeleteDomain(ctx, name); err != nil {
		return err
	}
	var sub int64
	if before != nil {
		sub = before.Subaccount
	}
	s.record(ctx, Change{Action: ActionDelete, ObjectType: ObjectDomain, ObjectID: name,
		Subaccount: sub, Before: before})
	return nil
}
