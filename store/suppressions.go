package store

import (
	"context"
	"time"
)

// Suppression types (SparkPost's names).
const (
	SuppressTransactional    = "transactional"
	SuppressNonTransactional = "non_transactional"
)

// Suppression sources (SparkPost's names) this gateway writes.
const (
	SourceManual = "Manually Added"
	SourceBounce = "Bounce Rule"
)

// Suppression is one entry of a suppression list: a recipient that must
// not get mail of one type from one account.
type Suppression struct {
	Subaccount  int64  // 0: the master account's list
	Recipient   string // lowercased address
	Type        string // SuppressTransactional or SuppressNonTransactional
	Source      string // e.g. SourceManual
	Description string
	CreatedAt   time.Time // kept by upserts of an existing entry
	UpdatedAt   time.Time
}

// SuppressionFilter selects suppression list entries; zero fields do not
// filter. Results come ordered by recipient, subaccount and type.
type SuppressionFilter struct {
	Subaccount  *int64
	Recipient   string // this recipient only (lowercase)
	Types       []string
	Sources     []string
	Domain      string    // recipients at this domain (lowercase)
	Description string    // entries whose description contains this text
	From, To    time.Time // UpdatedAt within [From, To]
	// After is the position to continue from: the last entry of the
	// previous page (Recipient, Subaccount and Type are used).
	After *Suppression
	Limit int // 0: 1000
}

// SuppressionDigest summarises the suppression lists: how many entries,
// the latest UpdatedAt and a sum over every entry's UpdatedAt (Unix
// microseconds modulo a prime), so that an entry deleted while another
// was added with an older clock still changes it.
type SuppressionDigest struct {
	Count, Latest, Sum int64
}

// SuppressionStore is the suppression list part of [Store].
type SuppressionStore interface {
	// UpsertSuppressions inserts the entries or updates source,
	// description and UpdatedAt of existing ones, in one transaction.
	UpsertSuppressions(ctx context.Context, entries []Suppression) error
	// ListSuppressions returns one page of the entries f selects and how
	// many entries the filter selects in all (ignoring After and Limit).
	ListSuppressions(ctx context.Context, f SuppressionFilter) ([]Suppression, int64, error)
	// SuppressionsFor returns the entries of the given accounts for the
	// given recipients (lowercased), in one query: the batched lookup of
	// the SMTP path.
	SuppressionsFor(ctx context.Context, subaccounts []int64, recipients []string) ([]Suppression, error)
	// SuppressionsDigest summarises every account's suppression list so
	// that a node holding the lists in memory can tell, cheaply, whether
	// they changed: an entry added, deleted or updated changes it.
	SuppressionsDigest(ctx context.Context) (SuppressionDigest, error)
	// AllSuppressions returns every account's entries (Subaccount,
	// Recipient and Type set) and their digest, read together; if there
	// are more than max entries it returns the digest and no entries.
	AllSuppressions(ctx context.Context, max int) ([]Suppression, SuppressionDigest, error)
	// DeleteSuppressions deletes the entries of recipient in subaccount's
	// list, of type typ ("" both); it returns how many it deleted.
	DeleteSuppressions(ctx context.Context, subaccount int64, recipient, typ string) (int64, error)
}
