package smtpd

import (
	"context"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

// Replies of the suppression list (SPEC §4).
var (
	// ErrSuppressed refuses at RCPT a recipient suppressed for both types.
	ErrSuppressed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Recipient is on the suppression list"}
	// ErrAllSuppressed refuses at DATA a message none of whose recipients
	// may get it: each is suppressed for the message's type (X-MSYS-API
	// options.transactional). Nothing is stored.
	ErrAllSuppressed = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "All recipients are on the suppression list"}
)

// suppressedFor is the reason recorded in the policy_rejection event of a
// recipient dropped at DATA.
func suppressedFor(transactional bool) *smtp.SMTPError {
	t := store.SuppressNonTransactional
	if transactional {
		t = store.SuppressTransactional
	}
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
		Message: "Recipient is on the suppression list (" + t + ")"}
}

// checkSuppressedRcpt looks addr up for the session's subaccount at RCPT.
// A recipient suppressed for both types is refused with ErrSuppressed and
// a policy_rejection event; otherwise the types found are returned for
// DATA to decide.
func (s *session) checkSuppressedRcpt(addr string) (suppression.Types, error) {
	ctx, cancel := context.WithTimeout(s.ctx, authTimeout)
	defer cancel()
	types, err := s.srv.supp.Lookup(ctx, s.subaccount, []string{addr})
	if err != nil {
		return 0, fmt.Errorf("rcpt to: %w", err)
	}
	if types[0] != suppression.Both {
		return types[0], nil
	}
	ev := store.Event{Type: store.EventPolicyRejection, KeyID: s.id.KeyID, Subaccount: s.subaccount,
		Recipient: addr, Reply: replyLine(ErrSuppressed)}
	if err := s.srv.st.AddEvents(ctx, []store.Event{ev}); err != nil {
		s.log.Warn("record policy rejection", "err", err)
	}
	s.log.Info("recipient refused: on the suppression list", "rcpt", addr)
	return 0, fmt.Errorf("rcpt to %s: %w", addr, ErrSuppressed)
}

// dropSuppressed removes from m the recipients suppressed for the
// message's type (X-MSYS-API options.transactional, default false: a
// non-transactional message), recording a policy_rejection event for each.
// known holds what RCPT found (lowercased address → types); the others
// (X-MSYS-API cc, bcc and archive) are looked up in one query. A message
// left with no recipient is refused with ErrAllSuppressed.
//
// This is the one case where a recipient accepted at RCPT is not
// delivered: whether it may get the message is known only from the
// message's header.
func (s *session) dropSuppressed(ctx context.Context, m *store.Message, x *MsysAPI, known map[string]suppression.Types) error {
	transactional := x != nil && x.Options != nil && x.Options.Transactional != nil && *x.Options.Transactional
	types := make([]suppression.Types, len(m.Recipients))
	var (
		missIdx []int
		miss    []string
	)
	for i, r := range m.Recipients {
		t, ok := known[strings.ToLower(r.Address)]
		if ok {
			types[i] = t
			continue
		}
		missIdx = append(missIdx, i)
		miss = append(miss, r.Address)
	}
	if len(miss) > 0 {
		found, err := s.srv.supp.Lookup(ctx, m.Subaccount, miss)
		if err != nil {
			return fmt.Errorf("data: %w", err)
		}
		for j, i := range missIdx {
			types[i] = found[j]
		}
	}
	var kept, dropped []*store.Recipient
	for i, r := range m.Recipients {
		if types[i].For(transactional) {
			dropped = append(dropped, r)
		} else {
			kept = append(kept, r)
		}
	}
	if len(dropped) == 0 {
		return nil
	}
	d := *m
	d.Recipients = dropped
	s.policyRejection(ctx, &d, x, suppressedFor(transactional))
	for _, r := range dropped {
		s.log.Info("recipient dropped: on the suppression list", "msg_id", m.ID, "rcpt", r.Address, "transactional", transactional)
	}
	if len(kept) == 0 {
		return fmt.Errorf("data: %d recipients suppressed: %w", len(dropped), ErrAllSuppressed)
	}
	m.Recipients = kept
	return nil
}
