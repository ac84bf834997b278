package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/store"
)

// AuditEntry is an audit log entry as GET /api/v1/audit and `smtpgw audit
// --json` show it.
type AuditEntry struct {
	ID         int64           `json:"id"`
	Time       string          `json:"timestamp"` // RFC 3339 in UTC
	Action     string          `json:"action"`
	ObjectType string          `json:"object_type"`
	ObjectID   string          `json:"object_id"`
	Subaccount int64           `json:"subaccount_id"`
	Before     json.RawMessage `json:"before,omitempty"`
	After      json.RawMessage `json:"after,omitempty"`
	Actor      AuditActor      `json:"actor"`
}

// AuditActor is who made a change.
type AuditActor struct {
	Via      string `json:"via"`
	KeyID    string `json:"key_id,omitempty"`
	ShortKey string `json:"short_key,omitempty"`
	User     string `json:"user,omitempty"`
	Host     string `json:"host,omitempty"`
	IP       string `json:"ip,omitempty"`
}

// NewAuditEntry returns the JSON shape of an entry.
func NewAuditEntry(e store.AuditEntry) AuditEntry {
	a := e.Actor
	return AuditEntry{ID: e.ID, Time: e.Time.UTC().Format(time.RFC3339Nano), Action: e.Action,
		ObjectType: e.ObjectType, ObjectID: e.ObjectID, Subaccount: e.Subaccount, Before: e.Before, After: e.After,
		Actor: AuditActor{Via: a.Via, KeyID: a.KeyID, ShortKey: a.ShortKey, User: a.User, Host: a.Host, IP: a.IP}}
}

// defaultAuditPerPage is the page size of GET /api/v1/audit without
// per_page.
const defaultAuditPerPage = 1000

// auditLog answers GET /api/v1/audit, newest first: from (as for events;
// default: every entry kept), per_page (default 1000, at most 10000) and
// cursor (from links.next). A request scoped to a subaccount sees the
// entries of that subaccount's objects only.
func (s *server) auditLog(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	f := audit.Filter{Limit: defaultAuditPerPage, Cursor: q.Get("cursor")}
	if v := q.Get("from"); v != "" {
		t, err := parseTime(v)
		if err != nil {
			return badRequest("from: %v", err)
		}
		f.Since = t
	}
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPerPage {
			return badRequest("per_page must be a number from 1 to %d, not %q", maxPerPage, v)
		}
		f.Limit = n
	}
	if !c.scope.all {
		sub := c.scope.sub
		f.Subaccount = &sub
	}
	p, err := audit.List(r.Context(), s.st, f)
	if errors.Is(err, audit.ErrBadCursor) {
		return badRequest("cursor %q: pass links.next of the previous page unchanged", f.Cursor)
	}
	if err != nil {
		return err
	}
	out := make([]AuditEntry, 0, len(p.Entries))
	for _, e := range p.Entries {
		out = append(out, NewAuditEntry(e))
	}
	links := map[string]string{}
	if p.Next != "" {
		next := url.Values{"cursor": {p.Next}, "per_page": {strconv.Itoa(f.Limit)}}
		if v := q.Get("from"); v != "" {
			next.Set("from", v)
		}
		links["next"] = "/api/v1/audit?" + next.Encode()
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": out, "links": links})
	return nil
}
