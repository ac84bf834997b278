package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
)

// keyRequest is the body of POST and PUT /api/v1/api-keys[/{id}]. Pointer
// fields tell "absent" (keep) from "empty".
type keyRequest struct {
	Label      *string   `json:"label"`
	Grants     *[]string `json:"grants"`
	ValidIPs   *[]string `json:"valid_ips"`
	Subaccount *int64    `json:"subaccount_id"`
}

// required refuses a create request without label or grants. Only the
// API's own rules live here; the values are checked by auth.Manager, whose
// refusals [refused] turns into 422s.
func (q *keyRequest) required() error {
	if q.Label == nil {
		return invalid("label is required: name the key after its user, e.g. \"newsletter app\"")
	}
	if q.Grants == nil {
		return invalid("grants are required: give at least one, e.g. [\"%s\"]", auth.GrantSMTPInject)
	}
	return nil
}

// apiField returns the API's name for one of auth's key parameters.
func apiField(field string) string {
	switch field {
	case auth.FieldAllowedIPs:
		return "valid_ips"
	case auth.FieldSubaccount:
		return "subaccount_id"
	}
	return field
}

// refused maps a key parameter refused by auth.Manager (auth.ErrInvalid)
// to a 422 naming the field as the API does; other errors are returned as
// they are.
func refused(err error) error {
	var pe *auth.ParamError
	switch {
	case errors.As(err, &pe) && pe.Field != "":
		return invalid("%s: %v", apiField(pe.Field), pe.Err)
	case errors.As(err, &pe):
		return invalid("%v", pe.Err)
	case errors.Is(err, auth.ErrInvalid):
		return invalid("%v", err)
	}
	return err
}

// keyError maps an error of the Manager: a refused parameter is a 422
// (see [refused]), no such key a 404 naming id; the rest (store faults) go
// to server.fail.
func keyError(err error, id string) error {
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no API key with id %s (list them with GET /api/v1/api-keys)", id)
	}
	return refused(err)
}

// scopedKey returns the active key id if it is in the caller's scope.
func (s *server) scopedKey(r *http.Request, c *caller, id string) (*store.Key, error) {
	k, err := s.m.Get(r.Context(), id)
	if err == nil && !c.scope.has(k.Subaccount) {
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, keyError(err, id)
	}
	return k, nil
}

// Paging of GET /api/v1/api-keys.
const (
	// defaultKeysPerPage is the page size without per_page.
	defaultKeysPerPage = store.DefaultKeyPage
	// maxKeysPerPage is the largest per_page accepted.
	maxKeysPerPage = store.MaxKeyPage
)

// keyPage is the answer to GET /api/v1/api-keys: one page of keys and, as
// SparkPost's events API, links.next to the following page (omitted on the
// last one).
type keyPage struct {
	Results []Key `json:"results"`
	Links   links `json:"links"`
}

// links holds the paging links of a listing.
type links struct {
	// Next is the path and query of the next page; omitted on the last.
	Next string `json:"next,omitempty"`
}

// listKeys answers GET /api/v1/api-keys: one page of the active keys in
// scope, oldest first. Query parameters: per_page (1 to 10000, default
// 1000), cursor (from links.next), label (substring, ignoring ASCII case),
// grant (keys holding it, as SparkPost's ?grant=) and subaccount (within
// the scope). The store reads only the page asked for: memory stays flat
// whatever the number of keys.
func (s *server) listKeys(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	f := store.KeyFilter{
		Label:  q.Get("label"),
		Grant:  q.Get("grant"),
		Cursor: q.Get("cursor"),
		Limit:  defaultKeysPerPage,
	}
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxKeysPerPage {
			return badRequest("per_page must be a number from 1 to %d, not %q", maxKeysPerPage, v)
		}
		f.Limit = n
	}
	if !c.scope.all {
		sub := c.scope.sub
		f.Subaccount = &sub
	}
	if v := q.Get("subaccount"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("subaccount must be a subaccount id (0: master account), not %q", v)
		}
		if !c.scope.has(n) {
			return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
				Description: fmt.Sprintf("subaccount %d is outside this request's scope (subaccount %d)", n, c.scope.sub)}
		}
		f.Subaccount = &n
	}
	keys, next, err := s.m.List(r.Context(), f)
	if err != nil {
		var pe *auth.ParamError
		if errors.As(err, &pe) {
			return badRequest("cursor: %q is not a cursor of this listing: use links.next of the previous page, or no cursor to start again", f.Cursor)
		}
		return err
	}
	out := keyPage{Results: make([]Key, 0, len(keys))}
	for _, k := range keys {
		out.Results = append(out.Results, NewKey(k))
	}
	if next != "" {
		nq := url.Values{}
		for _, p := range []string{"label", "grant", "subaccount"} {
			if v := q.Get(p); v != "" {
				nq.Set(p, v)
			}
		}
		nq.Set("per_page", strconv.Itoa(f.Limit))
		nq.Set("cursor", next)
		out.Links.Next = "/api/v1/api-keys?" + nq.Encode()
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// createKey answers POST /api/v1/api-keys. The key belongs to the scoped
// subaccount (X-MSYS-SUBACCOUNT, or the caller's own subaccount); a master
// key without the header may name it in subaccount_id. The answer is the
// only place the key itself ever appears.
func (s *server) createKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	var q keyRequest
	if err := decode(w, r, &q); err != nil {
		return err
	}
	if err := q.required(); err != nil {
		return err
	}
	sub := c.scope.owner()
	if q.Subaccount != nil && *q.Subaccount != sub {
		if !c.scope.all {
			return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
				Description: fmt.Sprintf("subaccount_id %d is outside this request's scope (subaccount %d)", *q.Subaccount, sub)}
		}
		sub = *q.Subaccount
	}
	p := auth.CreateParams{Label: *q.Label, Grants: *q.Grants, Subaccount: sub}
	if q.ValidIPs != nil {
		p.AllowedIPs = *q.ValidIPs
	}
	key, k, err := s.m.Create(r.Context(), p)
	if err != nil {
		return refused(err)
	}
	s.log.Info("api: key created", "key_id", k.ID, "label", k.Label, "subaccount", k.Subaccount,
		"grants", strings.Join(k.Grants, ","), "by_key", c.id.KeyID, "remote", r.RemoteAddr)
	j := NewKey(k)
	j.Key = key
	writeResults(w, j)
	return nil
}

// getKey answers GET /api/v1/api-keys/{id}.
func (s *server) getKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	k, err := s.scopedKey(r, c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeResults(w, NewKey(k))
	return nil
}

// updateKey answers PUT /api/v1/api-keys/{id}: label, grants and
// valid_ips replace the current values when present; "valid_ips": []
// allows any address again. Keys do not move between subaccounts here.
func (s *server) updateKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	id := r.PathValue("id")
	var q keyRequest
	if err := decode(w, r, &q); err != nil {
		return err
	}
	k, err := s.scopedKey(r, c, id)
	if err != nil {
		return err
	}
	if q.Subaccount != nil && *q.Subaccount != k.Subaccount {
		return invalid("subaccount_id: a key cannot move to another subaccount: create a new key there (X-MSYS-SUBACCOUNT) and delete this one")
	}
	if q.Label == nil && q.Grants == nil && q.ValidIPs == nil {
		return invalid("nothing to change: give label, grants or valid_ips")
	}
	var p auth.UpdateParams
	p.Label = q.Label
	if q.Grants != nil {
		p.Grants = *q.Grants
	}
	if q.ValidIPs != nil {
		if len(*q.ValidIPs) == 0 {
			p.ClearAllowedIPs = true
		} else {
			p.AllowedIPs = *q.ValidIPs
		}
	}
	k, err = s.m.Update(r.Context(), id, p)
	if err != nil {
		return keyError(err, id)
	}
	s.log.Info("api: key updated", "key_id", k.ID, "label", k.Label, "grants", strings.Join(k.Grants, ","),
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	writeResults(w, NewKey(k))
	return nil
}

// deleteKey answers DELETE /api/v1/api-keys/{id} with 204: the key is
// refused at once on this node, within auth.cache_ttl on the others.
func (s *server) deleteKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	id := r.PathValue("id")
	if _, err := s.scopedKey(r, c, id); err != nil {
		return err
	}
	if err := s.m.Delete(r.Context(), id); err != nil {
		return keyError(err, id)
	}
	s.log.Info("api: key deleted", "key_id", id, "by_key", c.id.KeyID, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// grantJSON is one grant in the answer to GET /api/v1/authenticate/grants,
// shaped as SparkPost's ({"key": name}); Enforced tells whether the grant
// has an effect in smtpgw.
type grantJSON struct {
	Key      string `json:"key"`
	Enforced bool   `json:"enforced"`
}

// grants answers GET /api/v1/authenticate/grants: the grants of the key
// used.
func (s *server) grants(w http.ResponseWriter, r *http.Request, c *caller) error {
	out := make([]grantJSON, 0, len(c.id.Grants))
	for _, g := range c.id.Grants {
		out = append(out, grantJSON{Key: g, Enforced: auth.IsEnforced(g)})
	}
	writeResults(w, out)
	return nil
}
