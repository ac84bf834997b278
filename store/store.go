// Package store is smtpgw's persistence layer: API keys, the durable relay
// queue (messages with one row per recipient), delivery events and sending
// domains, the audit log of admin changes, and web console sessions.
//
// It is the only package that imports a database driver. Two backends
// implement [Store] and pass the same contract tests (storetest):
//
//   - SQLite (modernc.org/sqlite, pure Go) in WAL mode with synchronous=FULL,
//     the embedded default for a single node;
//   - PostgreSQL (pgx/v5), shared by several gateway nodes. Relay workers claim
//     due recipients with FOR UPDATE SKIP LOCKED and a lease, so the work of a
//     node that dies comes back when its lease ends (a relay that stops
//     hands its leases back at once with [Store.ReleaseLeases]).
//
// Schema migrations are versioned SQL files embedded in the binary and applied
// by [Store.Migrate] (smtpgw migrate, and at start).
//
// Finished messages are deleted, with their recipients but not their
// events, by [Store.PruneMessages], which the relay calls every minute.
//
// Enqueue and Finish use group commit: concurrent callers' writes share one
// transaction and every caller returns only after that transaction committed,
// with its own result.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"time"
)

// Sentinel errors. Backends wrap driver errors with %w; these are the kinds
// callers branch on.
var (
	// ErrNotFound: no row with that id (or key hash, or domain name).
	ErrNotFound = errors.New("not found")
	// ErrExists: a unique value (key hash, domain name, message id) is taken.
	ErrExists = errors.New("already exists")
	// ErrUnavailable wraps failures to reach the database (connection
	// refused, pool closed, deadline while connecting). Callers answer 4xx.
	ErrUnavailable = errors.New("store unavailable")
)

// Key is an API key as stored. The key itself is never stored: only the
// SHA-256 of it (Hash) and its first four characters (ShortKey).
type Key struct {
	ID         string         // public id, 16 lowercase hex characters
	Label      string         // admin's name for the key
	Grants     []string       // SparkPost grant names, e.g. "smtp/inject"
	ShortKey   string         // first four characters of the key
	Hash       []byte         // SHA-256 of the key, 32 bytes; unique
	Subaccount int64          // 0: the master account
	AllowedIPs []netip.Prefix // empty: any address
	CreatedAt  time.Time
	UpdatedAt  time.Time
	LastUsedAt time.Time // zero: never used
	// LastUsedIP is the client address of the use recorded in LastUsedAt;
	// invalid (the zero Addr) if never used.
	LastUsedIP netip.Addr
	// ExpiresAt is when the key stops being accepted (refused like a
	// revoked key from then on); zero: never.
	ExpiresAt time.Time
	RevokedAt time.Time // zero: active. Revoked keys are kept so AUTH can log "revoked"
}

// Expired reports whether k has an expiry time and now is at or past it.
func (k *Key) Expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

// Recipient states (SPEC §5).
const (
	StateQueued    = "queued"    // never tried yet
	StateDeferred  = "deferred"  // tried, temporary failure, will retry at NextAttempt
	StateDelivered = "delivered" // upstream answered 2xx
	StateBounced   = "bounced"   // upstream answered 5xx (or permanent local failure)
	StateExpired   = "expired"   // still undelivered after relay.max_queue_lifetime
)

// Message is one accepted message: envelope, body and per-recipient state.
type Message struct {
	ID         string // queue id, see NewID; set by the caller before Enqueue
	KeyID      string // API key that injected it; "" for messages the gateway made (DSNs)
	Subaccount int64
	MailFrom   string // envelope sender; "" is the null sender <>
	Body       []byte // the full message as relayed (headers + body, CRLF line ends)
	// Size is the length of Body in bytes; filled by the store on every
	// read, also when Body is not loaded (ListMessages), and by Enqueue.
	Size       int64
	SMTPUTF8   bool   // MAIL FROM had SMTPUTF8
	BodyType   string // "", "7BIT", "8BITMIME" or "BINARYMIME"
	DSNRet     string // "", "FULL" or "HDRS" (RFC 3461 RET)
	DSNEnvID   string // RFC 3461 ENVID, "" if none
	CampaignID string // from X-MSYS-API campaign_id
	// MsysAPI is the parsed X-MSYS-API header re-encoded as JSON
	// (nil if the message had none). Events report its metadata and tags.
	MsysAPI json.RawMessage
	// Info is what events report of the message beyond its envelope.
	Info       MessageInfo
	CreatedAt  time.Time // set by Enqueue if zero
	Recipients []*Recipient
	// Lease, if set, stores every recipient already leased (as a claim
	// would): the relay of the node that stores it takes the message
	// straight to delivery, with no claim (see [Message.Claimed]).
	Lease *Lease

	prep *messagePrep // what prepareMessage encoded for the writer
}

// Lease is a relay's lease on recipients: its owner id and its end.
type Lease struct {
	Owner string
	Until time.Time
}

// Claimed returns m's recipients as a claim would have returned them,
// once Enqueue stored m under m.Lease (their ids set), with the body up
// to the size a claim returns (larger ones are read with MessageBody when
// delivered). If giveBody, the claims share m.Body: the caller hands its
// memory over and must neither change nor reuse it. Otherwise they get a
// copy (a body the caller reuses, or a mapping it unmaps).
func (m *Message) Claimed(giveBody bool) []*Claimed {
	var body []byte
	switch {
	case m.Size > claimBodyMax:
	case giveBody:
		body = m.Body
	default:
		body = append(make([]byte, 0, len(m.Body)), m.Body...)
	}
	out := make([]*Claimed, len(m.Recipients))
	for i, r := range m.Recipients {
		out[i] = &Claimed{
			Recipient:  *r,
			MailFrom:   m.MailFrom,
			KeyID:      m.KeyID,
			Subaccount: m.Subaccount,
			CampaignID: m.CampaignID,
			BodyType:   m.BodyType,
			SMTPUTF8:   m.SMTPUTF8,
			DSNRet:     m.DSNRet,
			DSNEnvID:   m.DSNEnvID,
			CreatedAt:  m.CreatedAt,
			MsysAPI:    m.MsysAPI,
			Info:       m.Info,
			Size:       m.Size,
			Body:       body,
		}
	}
	return out
}

// Recipient is one envelope recipient of a message and its delivery state.
type Recipient struct {
	ID          int64 // assigned by the store on Enqueue
	MessageID   string
	Address     string // as given in RCPT TO, without angle brackets
	Domain      string // lowercased domain part of Address; relay groups by it
	State       string // one of the State constants; Enqueue stores StateQueued if empty
	Attempts    int
	NextAttempt time.Time // due time for queued/deferred; Enqueue uses CreatedAt if zero
	LastReply   string    // last upstream reply or local reason, e.g. "451 4.3.0 try later"
	DSNNotify   string    // RFC 3461 NOTIFY, comma separated ("" = default: FAILURE)
	DSNOrcpt    string    // RFC 3461 ORCPT, as given
	UpdatedAt   time.Time
}

// Claimed is a recipient leased to one relay worker, with what it needs of
// its message to deliver it (the body is fetched with [Store.MessageBody]).
type Claimed struct {
	Recipient
	MailFrom   string
	KeyID      string
	Subaccount int64
	CampaignID string
	BodyType   string
	SMTPUTF8   bool
	DSNRet     string
	DSNEnvID   string
	CreatedAt  time.Time // message creation, for max_queue_lifetime
	// MsysAPI is the message's X-MSYS-API header as stored (see
	// [Message.MsysAPI]); [MsysEventFields] gives the metadata and tags
	// events report.
	MsysAPI json.RawMessage
	// Info is the message's [MessageInfo].
	Info MessageInfo
	// Size is the message's size in bytes.
	Size int64
	// Body is the message's body when the claim returned it (PostgreSQL
	// does: one round trip and one statement fewer per message); nil when
	// it is to be fetched with [Store.MessageBody].
	Body []byte
}

// ClaimOptions says how much [Store.ClaimDue] claims and what it skips.
type ClaimOptions struct {
	// Limit is the most recipients one claim leases; it must be positive.
	Limit int
	// Lease is how long the claimed recipients stay leased; it must be
	// positive.
	Lease time.Duration
	// ExcludeDomains are recipient domains (lowercase, as in
	// [Recipient.Domain]) whose recipients are not claimed, even when due:
	// the relay names destinations that already have all the work they can
	// take, so one slow domain's backlog does not fill every claim.
	ExcludeDomains []string
	// MessageID, when set, claims only due recipients of that message (and
	// of Domain, when set too): the relay completes a message whose
	// recipients a claim's Limit cut in two, so it goes out in one
	// transaction.
	MessageID string
	Domain    string
}

// Outcome is the result of one delivery attempt of a claimed recipient.
type Outcome struct {
	RecipientID int64
	State       string    // StateDelivered, StateDeferred, StateBounced or StateExpired
	NextAttempt time.Time // for StateDeferred
	Reply       string    // upstream reply or local reason
}

// Finish is what a relay worker writes after an attempt, in one transaction:
// recipient outcomes (only for recipients still leased to the owner), the
// events they caused, and new messages such as DSNs. It is what makes a
// bounce send exactly one DSN.
type Finish struct {
	Outcomes []Outcome
	Events   []Event
	Enqueue  []*Message
}

// Event types (SparkPost's names where they exist).
const (
	EventInjection       = "injection"
	EventDelivery        = "delivery"
	EventDelay           = "delay"
	EventBounce          = "bounce"
	EventOutOfBand       = "out_of_band"
	EventExpiry          = "expiry" // SparkPost reports this as a bounce class; kept distinct here
	EventPolicyRejection = "policy_rejection"
)

// Event is one step in a message's life.
type Event struct {
	ID         int64 // assigned by the store
	Type       string
	Time       time.Time // set by the store if zero
	MessageID  string
	KeyID      string
	Subaccount int64
	Recipient  string
	CampaignID string
	Metadata   json.RawMessage // X-MSYS-API metadata object, nil if none
	Tags       []string
	Reply      string // remote SMTP reply or local reason
	// Detail holds SparkPost's other fields of the event.
	Detail EventDetail

	detail    any  // Detail encoded for storage, by prepareDetails
	detailSet bool // detail is set
}

// EventFilter selects events; zero fields do not filter.
type EventFilter struct {
	MessageID  string
	KeyID      string
	Subaccount *int64
	Types      []string
	Since      time.Time
	Limit      int // 0: 1000
}

// QueueFilter selects messages for the queue CLI; zero fields do not filter.
type QueueFilter struct {
	State      string // messages with at least one recipient in this state
	Domain     string // messages with at least one recipient at this domain
	KeyID      string
	Subaccount *int64
	Limit      int // 0: 1000
	// OldestFirst lists the oldest messages first instead of the newest.
	OldestFirst bool
}

// QueueStats counts recipients per state.
type QueueStats struct {
	ByState map[string]int64
	// OldestQueued is the creation time of the oldest message that still has
	// a queued or deferred recipient; zero if there is none.
	OldestQueued time.Time
}

// Domain is a sending domain with its DKIM key.
type Domain struct {
	Name       string // lowercased, unique
	Subaccount int64  // 0: master account
	Shared     bool   // usable by every subaccount
	Selector   string // DKIM selector
	Algorithm  string // "rsa" or "ed25519"
	PrivateKey []byte // PKCS#8 PEM
	PublicKey  string // base64 of the public key as published in p=
	CreatedAt  time.Time
}

// CommitStats is what a store's group committer has done so far: the
// transactions it ran for messages and delivery outcomes (including a
// failed batch's items written again one by one), the items (messages,
// Finish calls) they held, and the time it spent on them, from starting
// to write a batch to answering it (including its short wait for announced
// messages, see groupcommit.go). Busy over wall time is the committer's
// utilisation: every SMTP session waits on it, so near 1 the node is at
// its injection ceiling.
//
// Batches counts the batches by that time: Batches[i] those that took at
// most CommitBuckets[i] (and more than the bucket before), the last entry
// those slower than every bucket. Every SMTP session waiting for a commit
// waits as long as its batch, so a slow batch (a disk whose fsync stalls, a
// PostgreSQL that is slow to answer) is a slow 250 for each of them.
type CommitStats struct {
	Transactions int64
	Items        int64
	Busy         time.Duration
	Batches      [len(CommitBuckets) + 1]int64
}

// CommitBuckets are the upper bounds of CommitStats.Batches.
var CommitBuckets = [...]time.Duration{
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

// Store is the persistence contract. Implementations are safe for
// concurrent use. Every method honours ctx.
type Store interface {
	// Migrate applies pending embedded migrations; it is idempotent.
	Migrate(ctx context.Context) error
	// Ping checks the database answers and, after a write failed for the
	// database's sake (a full disk, say), that it accepts writes again
	// (readiness; see health.go).
	Ping(ctx context.Context) error
	// Close stops the group committer (failing callers still waiting) and
	// closes the database. Safe to call twice.
	Close() error

	// API keys.
	CreateKey(ctx context.Context, k *Key) error // fills CreatedAt/UpdatedAt; ErrExists on duplicate id or hash
	GetKey(ctx context.Context, id string) (*Key, error)
	KeyByHash(ctx context.Context, hash []byte) (*Key, error) // includes revoked keys
	// ListKeys returns one page of the active (not revoked) keys matching
	// f, oldest first, and the cursor of the next page ("" after the last
	// page). See [KeyFilter]; ErrBadCursor for a cursor it did not make.
	ListKeys(ctx context.Context, f KeyFilter) (page []*Key, next string, err error)
	UpdateKey(ctx context.Context, k *Key) error    // label, grants, subaccount, allowed IPs, expiry; sets UpdatedAt
	RevokeKey(ctx context.Context, id string) error // sets RevokedAt; ErrNotFound if no active key
	// TouchKey records a use of key id at time at from client address ip
	// (may be the zero Addr). The last-used time never goes back; the
	// address is that of the latest use recorded.
	TouchKey(ctx context.Context, id string, at time.Time, ip netip.Addr) error

	// Sending limits (store/limits.go).
	LimitStore

	// Enqueue durably stores m with its recipients and one injection event per
	// recipient. It returns only after the transaction that holds m committed
	// (group commit: concurrent calls share one transaction). On error nothing
	// of m is stored. It assigns Recipient.ID and wakes relay workers.
	Enqueue(ctx context.Context, m *Message) error
	// Arriving announces a message that is being received and is expected
	// at Enqueue soon, so that the transaction being formed may wait a
	// little for it (group commit, see groupcommit.go). The caller calls
	// done once the message is read, just before Enqueue, or when it gives
	// up; calling done again does nothing.
	Arriving() (done func())
	// Wakeups delivers a value (coalesced) whenever new mail may be due:
	// after a local Enqueue commits and, on PostgreSQL, on NOTIFY from other
	// nodes. The same channel is returned on every call.
	Wakeups() <-chan struct{}
	// CommitStats reports what this process's group committer has done
	// since the store was opened (the metrics smtpgw_store_*).
	CommitStats() CommitStats

	// ClaimDue leases up to o.Limit due recipients (queued or deferred,
	// NextAttempt <= now, lease free or expired, domain not in
	// o.ExcludeDomains) to owner until now+o.Lease. Recipients of the same
	// message and domain come out adjacent.
	ClaimDue(ctx context.Context, owner string, o ClaimOptions) ([]*Claimed, error)
	// MessageBody returns the stored body of a message.
	MessageBody(ctx context.Context, id string) ([]byte, error)
	// Finish writes the outcomes of owner's claimed recipients (clearing
	// their lease and incrementing Attempts), the events, and the new
	// messages in one transaction (group commit: concurrent calls share one;
	// a call that fails does not fail the others). Outcomes for recipients no
	// longer leased to owner are ignored; the number applied is returned.
	Finish(ctx context.Context, owner string, f Finish) (int, error)

	// Queue administration.
	ListMessages(ctx context.Context, f QueueFilter) ([]*Message, error) // Recipients filled, Body nil, newest first (f.OldestFirst: oldest)
	GetMessage(ctx context.Context, id string) (*Message, error)         // with body and recipients
	RetryMessage(ctx context.Context, id string) (int, error)            // queued/deferred recipients due now; returns count
	DeleteMessage(ctx context.Context, id string) error                  // message, recipients (events stay)
	Stats(ctx context.Context) (QueueStats, error)

	// Queue maintenance.

	// PruneMessages deletes, with their recipients, up to limit messages
	// all of whose recipients are final (delivered, bounced, expired) and
	// whose latest recipient UpdatedAt is before finishedBefore; their
	// events stay. It returns how many messages it deleted.
	PruneMessages(ctx context.Context, finishedBefore time.Time, limit int) (int64, error)
	// ReleaseLeases clears the lease of every queued or deferred recipient
	// leased to owner ("" = to any owner), so it can be claimed at once,
	// and wakes relay workers as RetryMessage does. It returns how many
	// leases it cleared.
	ReleaseLeases(ctx context.Context, owner string) (int64, error)

	// Events.
	AddEvents(ctx context.Context, evs []Event) error
	ListEvents(ctx context.Context, f EventFilter) ([]Event, error) // newest first
	PruneEvents(ctx context.Context, before time.Time) (int64, error)

	// Sending domains.
	CreateDomain(ctx context.Context, d *Domain) error // ErrExists if the name is taken
	GetDomain(ctx context.Context, name string) (*Domain, error)
	ListDomains(ctx context.Context) ([]*Domain, error)
	DeleteDomain(ctx context.Context, name string) error

	// Event search with SparkPost's filters (store/events.go).
	EventSearcher

	// Event webhooks and their outbox (store/webhooks.go).
	WebhookStore

	// The audit log (store/audit.go).
	AuditStore

	// Web console sessions (store/session.go).
	SessionStore

	// Subaccounts, the suppression list and sending domain status
	// (store/subaccounts.go, suppressions.go, domainstatus.go).
	SubaccountStore
	SuppressionStore
	DomainUpdateStore
}
