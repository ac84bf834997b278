// Package audit records every change an admin makes to API keys, sending
// domains, subaccounts, webhooks and suppressions, whichever frontend made
// it (CLI, HTTP API, console), and reads the record back.
//
// The contract:
//
//   - Each frontend says who acts by putting an [Actor] in the request's
//     context with [WithActor]: the API and console middleware the
//     verified key's id, short key and client IP; the CLI [CLIActor] (the
//     OS user and host).
//   - Every frontend works on a store wrapped once with [Wrap]. Each write
//     of an administered object through the wrapped store that succeeds is
//     followed by one entry: when, the action, the object's type and id,
//     its state before and after as JSON, and the actor. The writes
//     recorded: keys (CreateKey, UpdateKey, RevokeKey; a rotation is a
//     create and an update), sending domains (CreateDomain, UpdateDomain,
//     DeleteDomain), subaccounts (CreateSubaccount, UpdateSubaccount),
//     sending limits of a key or subaccount (SetLimits, as an update of
//     that object), suppressions (UpsertSuppressions, one entry per call
//     whatever the number of recipients; DeleteSuppressions) and webhooks
//     (CreateWebhook, UpdateWebhook, DeleteWebhook). The JSON views are
//     built here, field by field, and never hold a key, a key hash, a
//     DKIM private key, a webhook's signing secret, credentials or custom
//     header values, or any other secret.
//   - Changes the gateway makes by itself (a hard bounce suppressing a
//     recipient, a domain's verification status) are not admin changes
//     and are not recorded: the relay writes through the unwrapped store.
//   - The entry is written after the change commits, not in its
//     transaction: if the store fails between the two, the change stands
//     and the lost entry is logged at ERROR with everything it would have
//     held. A change with no actor in its context is recorded with via
//     "unknown" rather than dropped.
//   - Reads go through [List]; entries are pruned with events
//     (events.retention) by the relay's maintenance loop.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// Actor is who makes a change: see [store.AuditActor].
type Actor = store.AuditActor

// Frontends, the values of Actor.Via.
const (
	ViaCLI     = "cli"
	ViaAPI     = "api"
	ViaConsole = "console"
	ViaUnknown = "unknown"
)

// Object types.
const (
	ObjectKey        = "api_key"
	ObjectDomain     = "sending_domain"
	ObjectSubaccount = "subaccount"
	ObjectWebhook    = "webhook"
	ObjectSuppressed = "suppression"
)

// Actions.
const (
	ActionCreate = "create"
	ActionUpdate = "update"
	ActionDelete = "delete"
)

type actorKey struct{}

// WithActor returns ctx carrying a: changes made with the context are
// recorded as a's.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor carried by ctx, if any.
func ActorFrom(ctx context.Context) (Actor, bool) {
	a, ok := ctx.Value(actorKey{}).(Actor)
	return a, ok
}

// CLIActor is the actor of a CLI command: via "cli", the OS user running
// it and the host name.
func CLIActor() Actor {
	a := Actor{Via: ViaCLI}
	if u, err := user.Current(); err == nil {
		a.User = u.Username
	} else if v := os.Getenv("USER"); v != "" {
		a.User = v
	}
	if h, err := os.Hostname(); err == nil {
		a.Host = h
	}
	return a
}

// Change is one change to record.
type Change struct {
	Action     string
	ObjectType string
	ObjectID   string
	Subaccount int64
	// Before and After are views of the object (nil: none), encoded as
	// JSON. They must hold no secret: use the views of this package.
	Before, After any
}

// Record writes c as an entry by the actor in ctx. It is called by [Wrap]'s
// store; a capability whose writes do not go through the store's
// administered-object methods calls it after its change committed.
func Record(ctx context.Context, st store.AuditStore, log *slog.Logger, c Change) {
	a, ok := ActorFrom(ctx)
	if !ok {
		a.Via = ViaUnknown
	}
	e := &store.AuditEntry{
		Action: c.Action, ObjectType: c.ObjectType, ObjectID: c.ObjectID,
		Subaccount: c.Subaccount, Actor: a,
	}
	var err error
	if e.Before, err = view(c.Before); err == nil {
		e.After, err = view(c.After)
	}
	if err == nil {
		// The change is done: record it even if the caller's context
		// was cancelled meanwhile.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = st.AddAudit(rctx, e)
		cancel()
	}
	if err != nil && log != nil {
		log.Error("audit: change made but not recorded", "err", err, "action", c.Action,
			"object_type", c.ObjectType, "object_id", c.ObjectID, "subaccount", c.Subaccount,
			"before", string(e.Before), "after", string(e.After), "via", a.Via, "actor_key_id", a.KeyID,
			"actor_user", a.User, "actor_host", a.Host, "ip", a.IP)
	}
}

// view encodes v as JSON; nil stays nil.
func view(v any) (json.RawMessage, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("audit: encode view: %w", err)
	}
	if string(b) == "null" {
		return nil, nil
	}
	return b, nil
}

// Filter selects entries for [List].
type Filter struct {
	Since time.Time
	// Subaccount, when not nil, keeps the entries of that subaccount's
	// objects only.
	Subaccount *int64
	// Cursor is the Next of the previous page ("" for the first page).
	Cursor string
	// Limit is the page size (0: 1000).
	Limit int
}

// Page is one page of entries, newest first. Next is the cursor of the
// following page, "" on the last one.
type Page struct {
	Entries []store.AuditEntry
	Next    string
}

// List reads one page of entries.
func List(ctx context.Context, st store.AuditStore, f Filter) (Page, error) {
	sf := store.AuditFilter{Since: f.Since, Subaccount: f.Subaccount, Limit: f.Limit}
	if sf.Limit <= 0 {
		sf.Limit = 1000
	}
	if f.Cursor != "" {
		var err error
		if sf.BeforeID, err = parseCursor(f.Cursor); err != nil {
			return Page{}, err
		}
	}
	// One more than the page tells whether there is a next page.
	sf.Limit++
	es, err := st.ListAudit(ctx, sf)
	if err != nil {
		return Page{}, fmt.Errorf("list audit log: %w", err)
	}
	p := Page{Entries: es}
	if len(es) == sf.Limit {
		p.Entries = es[:len(es)-1]
		p.Next = fmt.Sprintf("a%d", p.Entries[len(p.Entries)-1].ID)
	}
	return p, nil
}

// ErrBadCursor is returned by List for a cursor it did not make.
var ErrBadCursor = fmt.Errorf("audit: bad cursor: pass the cursor of the previous page's links.next unchanged")

func parseCursor(c string) (int64, error) {
	var id int64
	if n, err := fmt.Sscanf(c, "a%d", &id); err != nil || n != 1 || id <= 0 || fmt.Sprintf("a%d", id) != c {
		return 0, ErrBadCursor
	}
	return id, nil
}
