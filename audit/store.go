package audit

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"

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

// CreateSubaccount implements store.Store.
func (s *auditedStore) CreateSubaccount(ctx context.Context, sa *store.Subaccount) error {
	if err := s.Store.CreateSubaccount(ctx, sa); err != nil {
		return err
	}
	s.record(ctx, Change{Action: ActionCreate, ObjectType: ObjectSubaccount, ObjectID: strconv.FormatInt(sa.ID, 10),
		Subaccount: sa.ID, After: SubaccountView(sa)})
	return nil
}

// UpdateSubaccount implements store.Store.
func (s *auditedStore) UpdateSubaccount(ctx context.Context, sa *store.Subaccount) (int64, error) {
	var before *Subaccount
	if old, err := s.Store.GetSubaccount(ctx, sa.ID); err == nil {
		before = SubaccountView(old)
	}
	n, err := s.Store.UpdateSubaccount(ctx, sa)
	if err != nil {
		return n, err
	}
	s.record(ctx, Change{Action: ActionUpdate, ObjectType: ObjectSubaccount, ObjectID: strconv.FormatInt(sa.ID, 10),
		Subaccount: sa.ID, Before: before, After: SubaccountView(sa)})
	return n, nil
}

// UpsertSuppressions implements store.Store: one entry per call (a list
// may hold thousands of recipients), with the entries as they were and as
// they are.
func (s *auditedStore) UpsertSuppressions(ctx context.Context, entries []store.Suppression) error {
	before := s.suppressions(ctx, entries)
	if err := s.Store.UpsertSuppressions(ctx, entries); err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}
	after := make([]Suppression, 0, len(entries))
	for _, e := range entries {
		after = append(after, SuppressionView(e))
	}
	s.record(ctx, Change{Action: ActionUpdate, ObjectType: ObjectSuppressed, ObjectID: suppressionID(entries),
		Subaccount: entries[0].Subaccount, Before: before, After: after})
	return nil
}

// DeleteSuppressions implements store.Store.
func (s *auditedStore) DeleteSuppressions(ctx context.Context, subaccount int64, recipient, typ string) (int64, error) {
	before := s.suppressions(ctx, []store.Suppression{{Subaccount: subaccount, Recipient: recipient}})
	n, err := s.Store.DeleteSuppressions(ctx, subaccount, recipient, typ)
	if err != nil || n == 0 {
		return n, err
	}
	if typ != "" {
		before = slices.DeleteFunc(before, func(v Suppression) bool { return v.Type != typ })
	}
	s.record(ctx, Change{Action: ActionDelete, ObjectType: ObjectSuppressed, ObjectID: strings.ToLower(recipient),
		Subaccount: subaccount, Before: before})
	return n, nil
}

// suppressions returns the views of the stored entries for the accounts
// and recipients of entries (nil if none or unreadable).
func (s *auditedStore) suppressions(ctx context.Context, entries []store.Suppression) []Suppression {
	var subs []int64
	var rcpts []string
	for _, e := range entries {
		if !slices.Contains(subs, e.Subaccount) {
			subs = append(subs, e.Subaccount)
		}
		rcpts = append(rcpts, strings.ToLower(e.Recipient))
	}
	if len(rcpts) == 0 {
		return nil
	}
	rows, err := s.Store.SuppressionsFor(ctx, subs, rcpts)
	if err != nil || len(rows) == 0 {
		return nil
	}
	out := make([]Suppression, 0, len(rows))
	for _, r := range rows {
		out = append(out, SuppressionView(r))
	}
	return out
}

// suppressionID is the object id of an upsert: the recipient, or how many
// when there are several.
func suppressionID(entries []store.Suppression) string {
	if len(entries) == 1 {
		return strings.ToLower(entries[0].Recipient)
	}
	return strconv.Itoa(len(entries)) + " recipients"
}

// CreateWebhook implements store.Store.
func (s *auditedStore) CreateWebhook(ctx context.Context, w *store.Webhook) error {
	if err := s.Store.CreateWebhook(ctx, w); err != nil {
		return err
	}
	s.record(ctx, Change{Action: ActionCreate, ObjectType: ObjectWebhook, ObjectID: w.ID,
		Subaccount: webhookSub(w), After: WebhookView(w)})
	return nil
}

// UpdateWebhook implements store.Store.
func (s *auditedStore) UpdateWebhook(ctx context.Context, w *store.Webhook) error {
	var before *Webhook
	if old, err := s.Store.GetWebhook(ctx, w.ID); err == nil {
		before = WebhookView(old)
	}
	if err := s.Store.UpdateWebhook(ctx, w); err != nil {
		return err
	}
	s.record(ctx, Change{Action: ActionUpdate, ObjectType: ObjectWebhook, ObjectID: w.ID,
		Subaccount: webhookSub(w), Before: before, After: WebhookView(w)})
	return nil
}

// DeleteWebhook implements store.Store.
func (s *auditedStore) DeleteWebhook(ctx context.Context, id string) error {
	var before *Webhook
	var sub int64
	if old, err := s.Store.GetWebhook(ctx, id); err == nil {
		before, sub = WebhookView(old), webhookSub(old)
	}
	if err := s.Store.DeleteWebhook(ctx, id); err != nil {
		return err
	}
	s.record(ctx, Change{Action: ActionDelete, ObjectType: ObjectWebhook, ObjectID: id, Subaccount: sub, Before: before})
	return nil
}

// webhookSub is the account a webhook belongs to: its subaccount, or the
// master account for one receiving every account's events.
func webhookSub(w *store.Webhook) int64 {
	if w.Subaccount == nil {
		return 0
	}
	return *w.Subaccount
}

// UpdateDomain implements store.Store.
func (s *auditedStore) UpdateDomain(ctx context.Context, d *store.Domain) error {
	var before *Domain
	if old, err := s.Store.GetDomain(ctx, d.Name); err == nil {
		before = DomainView(old)
	}
	if err := s.Store.UpdateDomain(ctx, d); err != nil {
		return err
	}
	var after *Domain
	if now, err := s.Store.GetDomain(ctx, d.Name); err == nil {
		after = DomainView(now)
	} else {
		after = DomainView(d)
	}
	s.record(ctx, Change{Action: ActionUpdate, ObjectType: ObjectDomain, ObjectID: after.Name,
		Subaccount: after.Subaccount, Before: before, After: after})
	return nil
}

// SetLimits implements store.Store: a change to a key's or a
// subaccount's sending limits is recorded as an update of that object.
func (s *auditedStore) SetLimits(ctx context.Context, scope store.LimitScope, l store.Limits) error {
	old, oldErr := s.Store.GetLimits(ctx, scope)
	if err := s.Store.SetLimits(ctx, scope, l); err != nil {
		return err
	}
	c := Change{Action: ActionUpdate, ObjectID: scope.ID, After: LimitsView(l)}
	if oldErr == nil {
		c.Before = LimitsView(old)
	}
	switch scope.Kind {
	case store.LimitKindSubaccount:
		c.ObjectType = ObjectSubaccount
		c.Subaccount, _ = strconv.ParseInt(scope.ID, 10, 64)
	default:
		c.ObjectType = ObjectKey
		if k, err := s.Store.GetKey(ctx, scope.ID); err == nil {
			c.Subaccount = k.Subaccount
		}
	}
	s.record(ctx, c)
	return nil
}
