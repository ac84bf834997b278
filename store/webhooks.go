package store

import (
	"context"
	"encoding/json"
	"time"
)

// Webhook is an event webhook (package webhooks): where batches of events
// go and how to authenticate to it.
type Webhook struct {
	ID string // public id, 32 lowercase hex characters
	// Subaccount is the one account whose events it receives; nil: the
	// master account and every subaccount.
	Subaccount *int64
	Name       string
	Target     string   // URL the batches are POSTed to
	Events     []string // event types; empty: every type
	Active     bool
	AuthType   string          // "none", "basic" or "oauth2"
	Auth       json.RawMessage // auth_request_details and credentials, JSON ("{}" if none)
	Headers    json.RawMessage // custom headers, a JSON object ("{}" if none)
	Secret     string          // HMAC-SHA256 signing secret
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// Webhook batch states.
const (
	BatchPending   = "pending"   // to be sent (again) at NextAttempt
	BatchDelivered = "delivered" // the target answered 2xx
	BatchFailed    = "failed"    // given up: too old
)

// WebhookBatch is one rendered body for one webhook, sent until the target
// accepts it or it is too old.
type WebhookBatch struct {
	ID          string // sent as X-MessageSystems-Batch-ID
	WebhookID   string
	Body        []byte
	Events      int
	State       string
	Attempts    int
	NextAttempt time.Time
	CreatedAt   time.Time
}

// WebhookAttempt is one POST of a batch, for batch-status.
type WebhookAttempt struct {
	BatchID      string
	WebhookID    string
	Time         time.Time
	Attempt      int    // 1 for the first POST of the batch
	ResponseCode int    // HTTP status; 0: no answer (see Failure)
	Failure      string // "" on success; else what went wrong
	Node         string // the gateway that sent it
}

// BatchResult is the outcome of one POST of a claimed batch.
type BatchResult struct {
	Attempt WebhookAttempt
	// State is BatchDelivered, BatchPending (retry at NextAttempt) or
	// BatchFailed.
	State       string
	NextAttempt time.Time
}

// WebhookStore keeps webhooks and their durable outbox.
//
// The outbox is derived from the events table: each webhook has a cursor,
// the position of the last event it turned into a batch. DispatchWebhook
// reads the events after the cursor, lets the caller render a batch, and
// stores the batch and the new cursor in one transaction, so an event is
// in exactly one batch of each webhook however often nodes crash. Batches
// are then claimed with a lease (FOR UPDATE SKIP LOCKED on PostgreSQL),
// like recipients, so two nodes never send one batch at once.
type WebhookStore interface {
	// CreateWebhook stores w with its cursor at the newest event: it gets
	// the events recorded from now on. ErrExists if the id is taken.
	CreateWebhook(ctx context.Context, w *Webhook) error
	GetWebhook(ctx context.Context, id string) (*Webhook, error)
	ListWebhooks(ctx context.Context) ([]*Webhook, error) // oldest first
	// UpdateWebhook changes every field but the id, cursor and creation
	// time; it sets UpdatedAt.
	UpdateWebhook(ctx context.Context, w *Webhook) error
	// DeleteWebhook deletes the webhook with its batches and attempts.
	DeleteWebhook(ctx context.Context, id string) error

	// DispatchWebhook reads up to limit events after the webhook's cursor
	// (on PostgreSQL only events whose transaction can no longer be
	// overtaken by an earlier one) and calls render with them; a non-nil
	// batch it returns is stored as pending and due now. The cursor moves
	// past every event read. It returns how many events it read: 0 when
	// there were none or another node holds the webhook. ErrNotFound if
	// the webhook is gone.
	DispatchWebhook(ctx context.Context, id string, limit int, render func([]Event) (*WebhookBatch, error)) (int, error)
	// WebhookHold reports the transaction that committed events wait for
	// before DispatchWebhook may read them: on PostgreSQL the oldest
	// transaction still open anywhere on the server, once a newer one has
	// committed; nil when none is held back. SQLite always returns nil:
	// its dispatch waits for nothing.
	WebhookHold(ctx context.Context) (*WebhookHold, error)
	// ClaimWebhookBatches leases up to limit pending, due batches whose
	// lease is free or expired to owner until now+lease.
	ClaimWebhookBatches(ctx context.Context, owner string, limit int, lease time.Duration) ([]*WebhookBatch, error)
	// FinishWebhookBatch records an attempt and the batch's new state,
	// clearing the lease, if the batch is still leased to owner (it
	// returns false otherwise and writes nothing).
	FinishWebhookBatch(ctx context.Context, owner, batchID string, r BatchResult) (bool, error)
	// WebhookAttempts returns a webhook's attempts, newest first.
	WebhookAttempts(ctx context.Context, webhookID string, limit int) ([]WebhookAttempt, error)
	// PruneWebhookBatches deletes delivered and failed batches last
	// changed before before, and attempts older than it.
	PruneWebhookBatches(ctx context.Context, before time.Time) (int64, error)
}

// WebhookHold is a transaction open on the database server that holds
// webhook dispatch back (see WebhookStore.WebhookHold). Only XID is always
// set: PostgreSQL shows the rest of another user's session only to a role
// with pg_read_all_stats.
type WebhookHold struct {
	XID         uint64    // its transaction id
	PID         int       // its server process
	Since       time.Time // when the transaction began
	Database    string
	User        string
	Application string
	State       string // "active", "idle in transaction", ...
}

// normWebhook fills the JSON defaults of w.
func normWebhook(w *Webhook) {
	if len(w.Auth) == 0 {
		w.Auth = json.RawMessage("{}")
	}
	if len(w.Headers) == 0 {
		w.Headers = json.RawMessage("{}")
	}
	if w.AuthType == "" {
		w.AuthType = "none"
	}
	if w.Events == nil {
		w.Events = []string{}
	}
}
