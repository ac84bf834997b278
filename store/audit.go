package store

import (
	"context"
	"encoding/json"
	"strings"
	"time"
)

// AuditEntry is one recorded change to an administered object (see package
// audit, which builds them). Before and After are JSON views of the object
// that never hold a key, a key hash or another secret.
type AuditEntry struct {
	ID         int64     // assigned by the store; increases with every entry
	Time       time.Time // set by the store if zero
	Action     string    // e.g. "create", "update", "delete", "rotate"
	ObjectType string    // e.g. "api_key", "sending_domain", "subaccount"
	ObjectID   string
	Subaccount int64           // the object's subaccount (0: master account)
	Before     json.RawMessage // nil for a creation
	After      json.RawMessage // nil for a deletion
	Actor      AuditActor
}

// AuditActor is who made a change and from where.
type AuditActor struct {
	Via      string // frontend: "cli", "api" or "console"
	KeyID    string // the acting API key's id ("" for the CLI)
	ShortKey string // its first four characters
	User     string // OS user running the CLI
	Host     string // host the CLI ran on
	IP       string // client address of an API or console request
}

// AuditFilter selects audit entries; zero fields do not filter.
type AuditFilter struct {
	Since      time.Time
	Subaccount *int64
	ObjectType string
	ObjectID   string
	// BeforeID pages: only entries with a smaller ID (the last ID of the
	// previous page). 0: from the newest.
	BeforeID int64
	Limit    int // 0: 1000
}

// AuditStore keeps the audit log.
type AuditStore interface {
	// AddAudit stores e, setting its ID (and Time if zero).
	AddAudit(ctx context.Context, e *AuditEntry) error
	// ListAudit returns entries newest first (by decreasing ID).
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
	// PruneAudit deletes entries older than before; it returns how many.
	PruneAudit(ctx context.Context, before time.Time) (int64, error)
}

const auditCols = `id, time, action, object_type, object_id, subaccount, before_json, after_json,
	via, actor_key_id, actor_short, actor_user, actor_host, ip`

// auditWhere builds the WHERE clause of f (with the leading " WHERE ", or
// ""), numbering placeholders with ph, and its arguments; times are
// converted by tm.
func auditWhere(f AuditFilter, ph func(i int) string, tm func(time.Time) any) (string, []any) {
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, cond+ph(len(args)))
	}
	if !f.Since.IsZero() {
		add("time >= ", tm(f.Since))
	}
	if f.Subaccount != nil {
		add("subaccount = ", *f.Subaccount)
	}
	if f.ObjectType != "" {
		add("object_type = ", f.ObjectType)
	}
	if f.ObjectID != "" {
		add("object_id = ", f.ObjectID)
	}
	if f.BeforeID > 0 {
		add("id < ", f.BeforeID)
	}
	if len(where) == 0 {
		return "", args
	}
	return " WHERE " + strings.Join(where, " AND "), args
}

// nullJSON is raw as a nullable text value.
func nullJSON(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	return string(raw)
}
