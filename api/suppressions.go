package api

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

// suppressionEntry is one entry of a PUT /api/v1/suppression-list body.
// SparkPost's older form, the booleans transactional and
// non_transactional instead of type, is accepted too.
type suppressionEntry struct {
	Recipient        string `json:"recipient"`
	Email            string `json:"email"` // SparkPost's older name of recipient
	Type             string `json:"type"`
	Description      string `json:"description"`
	Transactional    *bool  `json:"transactional"`
	NonTransactional *bool  `json:"non_transactional"`
}

// entries expands e into one entry per type.
func (e suppressionEntry) entries() []suppression.Entry {
	r := e.Recipient
	if r == "" {
		r = e.Email
	}
	if e.Type != "" || (e.Transactional == nil && e.NonTransactional == nil) {
		return []suppression.Entry{{Recipient: r, Type: e.Type, Description: e.Description}}
	}
	var out []suppression.Entry
	if e.Transactional != nil && *e.Transactional {
		out = append(out, suppression.Entry{Recipient: r, Type: store.SuppressTransactional, Description: e.Description})
	}
	if e.NonTransactional != nil && *e.NonTransactional {
		out = append(out, suppression.Entry{Recipient: r, Type: store.SuppressNonTransactional, Description: e.Description})
	}
	if out == nil { // both false: the type is missing
		out = []suppression.Entry{{Recipient: r, Description: e.Description}}
	}
	return out
}

// suppressionError maps an error of suppression.Service: a refused
// parameter is a 400 (SparkPost's status for a bad entry), nothing to
// find a 404.
func suppressionError(err error, recipient string) error {
	var pe *suppression.ParamError
	switch {
	case errors.As(err, &pe):
		return badRequest("%s: %v", pe.Field, pe.Err)
	case errors.Is(err, store.ErrNotFound):
		return notFound("%s is not on the suppression list", recipient)
	}
	return err
}

// upsertSuppressions answers PUT /api/v1/suppression-list: the entries of
// "recipients" are added to (or updated in) the scoped account's list,
// all or none.
func (s *server) upsertSuppressions(w http.ResponseWriter, r *http.Request, c *caller) error {
	var q struct {
		Recipients []suppressionEntry `json:"recipients"`
	}
	if err := decode(w, r, &q); err != nil {
		return err
	}
	var entries []suppression.Entry
	for _, e := range q.Recipients {
		entries = append(entries, e.entries()...)
	}
	if err := s.supp.Upsert(r.Context(), c.scope.owner(), entries); err != nil {
		return suppressionError(err, "")
	}
	s.log.Info("api: suppression list updated", "entries", len(entries), "subaccount", c.scope.owner(),
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	writeResults(w, map[string]string{"message": "Suppression List successfully updated"})
	return nil
}

// upsertSuppression answers PUT /api/v1/suppression-list/{recipient}
// (SparkPost's single-entry form): body {"type", "description"}.
func (s *server) upsertSuppression(w http.ResponseWriter, r *http.Request, c *caller) error {
	var q suppressionEntry
	if err := decode(w, r, &q); err != nil {
		return err
	}
	q.Recipient, q.Email = r.PathValue("recipient"), ""
	entries := q.entries()
	if err := s.supp.Upsert(r.Context(), c.scope.owner(), entries); err != nil {
		return suppressionError(err, q.Recipient)
	}
	s.log.Info("api: suppression list updated", "entries", len(entries), "subaccount", c.scope.owner(),
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	writeResults(w, map[string]string{"message": "Suppression List successfully updated"})
	return nil
}

// scopeAccount is the account a read is limited to: nil for an unscoped
// master request (every account).
func scopeAccount(c *caller) *int64 {
	if c.scope.all {
		return nil
	}
	sub := c.scope.sub
	return &sub
}

// getSuppression answers GET /api/v1/suppression-list/{recipient}: the
// recipient's entries in scope, 404 if none.
func (s *server) getSuppression(w http.ResponseWriter, r *http.Request, c *caller) error {
	rcpt := r.PathValue("recipient")
	rows, err := s.supp.Get(r.Context(), scopeAccount(c), rcpt)
	if err != nil {
		return suppressionError(err, rcpt)
	}
	out := make([]Suppression, 0, len(rows))
	for _, e := range rows {
		out = append(out, NewSuppression(e))
	}
	writeResults(w, out)
	return nil
}

// deleteSuppression answers DELETE /api/v1/suppression-list/{recipient}
// with 204: the entries of the scoped account's list, of the body's
// "type" if given, else of both types.
func (s *server) deleteSuppression(w http.ResponseWriter, r *http.Request, c *caller) error {
	rcpt := r.PathValue("recipient")
	var q struct {
		Type string `json:"type"`
	}
	if r.ContentLength != 0 {
		if err := decode(w, r, &q); err != nil && r.ContentLength > 0 {
			return err
		}
	}
	if err := s.supp.Delete(r.Context(), c.scope.owner(), rcpt, q.Type); err != nil {
		return suppressionError(err, rcpt)
	}
	s.log.Info("api: suppression list entry deleted", "subaccount", c.scope.owner(), "type", q.Type,
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// suppressionPage is the answer of the search: SparkPost's results,
// links (first, next) and total_count.
type suppressionPage struct {
	Results    []Suppression `json:"results"`
	Links      []pageLink    `json:"links"`
	TotalCount int64         `json:"total_count"`
}

// pageLink is one of SparkPost's paging links.
type pageLink struct {
	Href string `json:"href"`
	Rel  string `json:"rel"`
}

// searchSuppressions answers GET /api/v1/suppression-list with
// SparkPost's filters (from, to, domain, sources, types, description,
// per_page, cursor), ordered by recipient, in the request's scope.
func (s *server) searchSuppressions(w http.ResponseWriter, r *http.Request, c *caller) error {
	v := r.URL.Query()
	q := suppression.Query{Subaccount: scopeAccount(c), Domain: v.Get("domain"), Cursor: v.Get("cursor"),
		Description: v.Get("description"), Types: splitList(v.Get("types")), Sources: splitList(v.Get("sources"))}
	for _, name := range []string{"from", "to"} {
		if raw := v.Get(name); raw != "" {
			t, err := parseTime(raw)
			if err != nil {
				return badRequest("%s: %v", name, err)
			}
			if name == "from" {
				q.From = t
			} else {
				q.To = t
			}
		}
	}
	if raw := v.Get("per_page"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			return badRequest("per_page: %q is not a number: give 1 to %d", raw, suppression.MaxPerPage)
		}
		q.PerPage = n
		if n == 0 {
			q.PerPage = -1 // refused as out of range, not the default
		}
	}
	p, err := s.supp.Search(r.Context(), q)
	if err != nil {
		return suppressionError(err, "")
	}
	out := suppressionPage{Results: make([]Suppression, 0, len(p.Results)), Links: []pageLink{}, TotalCount: p.TotalCount}
	for _, e := range p.Results {
		out.Results = append(out.Results, NewSuppression(e))
	}
	link := func(cursor string) string {
		nv := url.Values{}
		for k, vs := range v {
			if k != "cursor" && k != "page" {
				nv[k] = vs
			}
		}
		nv.Set("cursor", cursor)
		return r.URL.Path + "?" + nv.Encode()
	}
	out.Links = append(out.Links, pageLink{Href: link("initial"), Rel: "first"})
	if p.NextCursor != "" {
		out.Links = append(out.Links, pageLink{Href: link(p.NextCursor), Rel: "next"})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// splitList splits a comma-separated parameter; "" is none.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
