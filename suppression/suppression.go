// Package suppression is the suppression list (SPEC §3, §4): recipients
// that must not get mail of a type (transactional, non_transactional)
// from an account. The HTTP API (/api/v1/suppression-list), the CLI
// (smtpgw suppressions), the SMTP session and the relay all go through
// this package, so the rules live here only:
//
//   - Each account has its own list: the master account (0) and every
//     subaccount. A message of subaccount N is checked against N's list
//     and the master account's list, which applies account-wide.
//   - Recipients are compared without regard to case.
//   - Every change goes through one function per operation ([Service.Upsert],
//     [Service.Delete], [Service.AddHardBounce]), the places to record it
//     (audit log); each evicts the recipient from this process's
//     [Checker] at once; other processes see it within the Checker's TTL.
//   - A hard bounce (bounce classes 10, 30 and 90) adds the recipient for
//     both types to its message's account, source "Bounce Rule".
//
// On the SMTP path ([Checker.Lookup]) a recipient suppressed for both
// types is refused at RCPT; one suppressed for a single type is decided at
// DATA from X-MSYS-API options.transactional (see smtpd). The lookup is
// cheap: results, found or not, are cached per recipient for a short TTL,
// and the misses of one call are looked up in one query.
package suppression

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/smtpgw/smtpgw/store"
)

// Types is a set of suppression types.
type Types uint8

// The suppression types.
const (
	Transactional Types = 1 << iota
	NonTransactional
	// Both types: the recipient gets no mail at all.
	Both = Transactional | NonTransactional
)

// For reports whether t suppresses a message that is transactional or not.
func (t Types) For(transactional bool) bool {
	if transactional {
		return t&Transactional != 0
	}
	return t&NonTransactional != 0
}

// typeOf maps a store type name to its bit.
func typeOf(name string) Types {
	switch name {
	case store.SuppressTransactional:
		return Transactional
	case store.SuppressNonTransactional:
		return NonTransactional
	}
	return 0
}

// Limits on entries (SparkPost's).
const (
	// MaxDescriptionLen is the longest description, in bytes.
	MaxDescriptionLen = 1024
	// MaxBatch is the most entries one Upsert takes.
	MaxBatch = 10000
	// MaxPerPage is the largest page of a search.
	MaxPerPage = 10000
	// DefaultPerPage is the page size of a search that names none.
	DefaultPerPage = 1000
)

// ErrInvalid is matched by every [*ParamError].
var ErrInvalid = errors.New("invalid suppression list parameter")

// ParamError is a refused parameter: Field names it (with the entry's
// index for batches, "recipients[3].type"), Err says what is wrong.
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

// Entry is an entry to add or update.
type Entry struct {
	Recipient   string
	Type        string // store.SuppressTransactional or store.SuppressNonTransactional
	Description string
}

// Service performs the suppression list operations.
type Service struct {
	st    store.Store
	cache *Checker // evicted on changes; nil: none in this process
}

// New returns a Service on st that evicts changed recipients from c (nil:
// no Checker in this process).
func New(st store.Store, c *Checker) *Service {
	return &Service{st: st, cache: c}
}

// NormalizeRecipient checks an address and returns its stored form
// (lowercased, without angle brackets).
func NormalizeRecipient(s string) (string, error) {
	a := strings.TrimSpace(s)
	a = strings.TrimSuffix(strings.TrimPrefix(a, "<"), ">")
	if a == "" {
		return "", errors.New("empty: give an email address")
	}
	if len(a) > 320 || !utf8.ValidString(a) || strings.ContainsAny(a, " \t\r\n<>,") {
		return "", fmt.Errorf("%q is not an email address", s)
	}
	p, err := mail.ParseAddress(a)
	if err != nil || p.Address != a || !strings.Contains(a, "@") {
		return "", fmt.Errorf("%q is not an email address", s)
	}
	return strings.ToLower(a), nil
}

// CheckType checks a type name; "" is refused.
func CheckType(t string) (string, error) {
	switch t {
	case store.SuppressTransactional, store.SuppressNonTransactional:
		return t, nil
	}
	return "", fmt.Errorf("%q is not a type: use transactional or non_transactional", t)
}

// Upsert adds the entries to subaccount sub's list, or updates the
// description of those present (source "Manually Added"), all or none. At
// most MaxBatch entries.
func (s *Service) Upsert(ctx context.Context, sub int64, entries []Entry) error {
	if len(entries) == 0 {
		return paramErrorf("recipients", "empty: give at least one entry")
	}
	if len(entries) > MaxBatch {
		return paramErrorf("recipients", "%d entries: at most %d in one request", len(entries), MaxBatch)
	}
	rows := make([]store.Suppression, 0, len(entries))
	for i, e := range entries {
		field := func(f string) string {
			if len(entries) == 1 {
				return f
			}
			return fmt.Sprintf("recipients[%d].%s", i, f)
		}
		addr, err := NormalizeRecipient(e.Recipient)
		if err != nil {
			return &ParamError{Field: field("recipient"), Err: err}
		}
		typ, err := CheckType(e.Type)
		if err != nil {
			return &ParamError{Field: field("type"), Err: err}
		}
		if len(e.Description) > MaxDescriptionLen || !utf8.ValidString(e.Description) {
			return paramErrorf(field("description"), "at most %d bytes of UTF-8", MaxDescriptionLen)
		}
		rows = append(rows, store.Suppression{Subaccount: sub, Recipient: addr, Type: typ,
			Source: store.SourceManual, Description: e.Description})
	}
	err := s.st.UpsertSuppressions(ctx, rows)
	s.evict(rows)
	if err != nil {
		return fmt.Errorf("update suppression list: %w", err)
	}
	return nil
}

// AddHardBounce suppresses recipient for both types in subaccount sub's
// list after a hard bounce, with the bounce reply as description.
func (s *Service) AddHardBounce(ctx context.Context, sub int64, recipient, reply string) error {
	addr, err := NormalizeRecipient(recipient)
	if err != nil {
		return fmt.Errorf("suppress bounced recipient: %w", err)
	}
	desc := reply
	if len(desc) > MaxDescriptionLen || !utf8.ValidString(desc) {
		desc = strings.ToValidUTF8(desc[:min(len(desc), MaxDescriptionLen)], "")
	}
	rows := []store.Suppression{
		{Subaccount: sub, Recipient: addr, Type: store.SuppressTransactional, Source: store.SourceBounce, Description: desc},
		{Subaccount: sub, Recipient: addr, Type: store.SuppressNonTransactional, Source: store.SourceBounce, Description: desc},
	}
	err = s.st.UpsertSuppressions(ctx, rows)
	s.evict(rows)
	if err != nil {
		return fmt.Errorf("suppress bounced recipient: %w", err)
	}
	return nil
}

// Delete removes recipient's entries of type typ ("" both) from
// subaccount sub's list; store.ErrNotFound (wrapped) if there were none.
func (s *Service) Delete(ctx context.Context, sub int64, recipient, typ string) error {
	addr, err := NormalizeRecipient(recipient)
	if err != nil {
		return &ParamError{Field: "recipient", Err: err}
	}
	if typ != "" {
		if _, err := CheckType(typ); err != nil {
			return &ParamError{Field: "type", Err: err}
		}
	}
	n, err := s.st.DeleteSuppressions(ctx, sub, addr, typ)
	s.evict([]store.Suppression{{Recipient: addr}})
	if err != nil {
		return fmt.Errorf("delete from suppression list: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("delete from suppression list: %s: %w", addr, store.ErrNotFound)
	}
	return nil
}

// Get returns recipient's entries in subaccount sub's list (nil: every
// account's); store.ErrNotFound (wrapped) if there are none.
func (s *Service) Get(ctx context.Context, sub *int64, recipient string) ([]store.Suppression, error) {
	addr, err := NormalizeRecipient(recipient)
	if err != nil {
		return nil, &ParamError{Field: "recipient", Err: err}
	}
	out, _, err := s.st.ListSuppressions(ctx, store.SuppressionFilter{Subaccount: sub, Recipient: addr})
	if err != nil {
		return nil, fmt.Errorf("get suppression list entry: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("get suppression list entry: %s: %w", addr, store.ErrNotFound)
	}
	return out, nil
}

// Query is a search of the suppression list.
type Query struct {
	Subaccount *int64   // nil: every account
	Types      []string // checked names
	Sources    []string
	Domain     string
	// Description matches entries whose description contains it.
	Description string
	From, To    time.Time
	// Cursor continues a search: "" or "initial" starts it, else the
	// NextCursor of the previous page.
	Cursor  string
	PerPage int // 0: DefaultPerPage; at most MaxPerPage
}

// Page is one page of a search.
type Page struct {
	Results    []store.Suppression
	TotalCount int64
	// NextCursor continues the search; "" on the last page.
	NextCursor string
}

// Search returns one page of the entries q selects, ordered by recipient.
func (s *Service) Search(ctx context.Context, q Query) (Page, error) {
	per := q.PerPage
	if per == 0 {
		per = DefaultPerPage
	}
	if per < 1 || per > MaxPerPage {
		return Page{}, paramErrorf("per_page", "%d is out of range: give 1 to %d", q.PerPage, MaxPerPage)
	}
	for _, t := range q.Types {
		if _, err := CheckType(t); err != nil {
			return Page{}, &ParamError{Field: "types", Err: err}
		}
	}
	f := store.SuppressionFilter{Subaccount: q.Subaccount, Types: q.Types, Sources: q.Sources,
		Domain: strings.ToLower(q.Domain), Description: q.Description, From: q.From, To: q.To, Limit: per + 1}
	if q.Cursor != "" && q.Cursor != "initial" {
		after, err := decodeCursor(q.Cursor)
		if err != nil {
			return Page{}, paramErrorf("cursor", "not a cursor of this search: start again without it (or with cursor=initial)")
		}
		f.After = after
	}
	rows, total, err := s.st.ListSuppressions(ctx, f)
	if err != nil {
		return Page{}, fmt.Errorf("search suppression list: %w", err)
	}
	p := Page{Results: rows, TotalCount: total}
	if len(rows) > per {
		p.Results = rows[:per]
		p.NextCursor = encodeCursor(rows[per-1])
	}
	return p, nil
}

// cursor is the position after which a search continues.
type cursor struct {
	R string `json:"r"`
	S int64  `json:"s"`
	T string `json:"t"`
}

func encodeCursor(e store.Suppression) string {
	b, _ := json.Marshal(cursor{R: e.Recipient, S: e.Subaccount, T: e.Type}) // plain struct: cannot fail
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (*store.Suppression, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	var c cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return &store.Suppression{Recipient: c.R, Subaccount: c.S, Type: c.T}, nil
}

func (s *Service) evict(rows []store.Suppression) {
	if s.cache == nil {
		return
	}
	for _, r := range rows {
		s.cache.Evict(r.Recipient)
	}
}
