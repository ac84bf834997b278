package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
)

// keyRequest is the body of POST and PUT /api/v1/api-keys[/{id}]. Pointer
// fields tell "absent" (keep) from "empty".
type keyRequest struct {
	Label      *string   `json:"label"`
	Grants     *[]string `json:"grants"`
	ValidIPs   *[]string `json:"valid_ips"`
	Subaccount *int64    `json:"subaccount_id"`
	// ExpiresAt is an RFC 3339 time; "" (in PUT) removes the expiry.
	ExpiresAt *string `json:"expires_at"`
	// Limits replace the key's sending limits; {} removes them.
	Limits *Limits `json:"limits"`
}

// expiry parses q.ExpiresAt: zero time and clear=false when absent.
func (q *keyRequest) expiry() (t time.Time, clear bool, err error) {
	switch {
	case q.ExpiresAt == nil:
		return time.Time{}, false, nil
	case strings.TrimSpace(*q.ExpiresAt) == "":
		return time.Time{}, true, nil
	}
	t, err = time.Parse(time.RFC3339, strings.TrimSpace(*q.ExpiresAt))
	if err != nil {
		return time.Time{}, false, invalid("expires_at: %q is not an RFC 3339 time: give e.g. \"2027-01-31T00:00:00Z\" (\"\" in PUT: never expires)", *q.ExpiresAt)
	}
	return t.UTC(), false, nil
}

// limits checks q.Limits: nil when absent.
func (q *keyRequest) limits() (*store.Limits, error) {
	if q.Limits == nil {
		return nil, nil
	}
	l := q.Limits.Store()
	if err := limits.Validate(l); err != nil {
		return nil, invalid("limits: %v", err)
	}
	return &l, nil
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
	scopes := make([]store.LimitScope, len(keys))
	for i, k := range keys {
		scopes[i] = limits.KeyScope(k.ID)
	}
	lims, err := s.st.LimitsOf(r.Context(), scopes)
	if err != nil {
		return err
	}
	out := keyPage{Results: make([]Key, 0, len(keys))}
	for i, k := range keys {
		j := NewKey(k)
		j.Limits = NewLimits(lims[scopes[i]])
		out.Results = append(out.Results, j)
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
	exp, _, err := q.expiry()
	if err != nil {
		return err
	}
	p.ExpiresAt = exp
	lim, err := q.limits()
	if err != nil {
		return err
	}
	key, k, err := s.m.Create(r.Context(), p)
	if err != nil {
		return refused(err)
	}
	s.log.Info("api: key created", "key_id", k.ID, "label", k.Label, "subaccount", k.Subaccount,
		"grants", strings.Join(k.Grants, ","), "by_key", c.id.KeyID, "remote", r.RemoteAddr)
	j := NewKey(k)
	j.Key = key
	if lim != nil && !lim.IsZero() {
		if err := limits.Save(r.Context(), s.st, s.quota, limits.KeyScope(k.ID), *lim); err != nil {
			return fmt.Errorf("key %s created without its limits: %w", k.ID, err)
		}
		j.Limits = NewLimits(*lim)
	}
	writeResults(w, j)
	return nil
}

// keyWithUsage is the JSON of one key with its limits and their current
// windows.
func (s *server) keyWithUsage(r *http.Request, k *store.Key) (Key, error) {
	j := NewKey(k)
	l, us, err := limits.Usages(r.Context(), s.st, limits.KeyScope(k.ID), time.Now())
	if err != nil {
		return j, err
	}
	j.Limits, j.Usage = NewLimits(l), NewUsage(us)
	return j, nil
}

// getKey answers GET /api/v1/api-keys/{id}.
func (s *server) getKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	k, err := s.scopedKey(r, c, r.PathValue("id"))
	if err != nil {
		return err
	}
	j, err := s.keyWithUsage(r, k)
	if err != nil {
		return err
	}
	writeResults(w, j)
	return nil
}

// updateKey answers PUT /api/v1/api-keys/{id}: label, grants, valid_ips,
// expires_at and limits replace the current values when present;
// "valid_ips": [] allows any address again, "expires_at": "" removes the
// expiry, "limits": {} the limits. Keys do not move between subaccounts
// here.
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
	if q.Label == nil && q.Grants == nil && q.ValidIPs == nil && q.ExpiresAt == nil && q.Limits == nil {
		return invalid("nothing to change: give label, grants, valid_ips, expires_at or limits")
	}
	lim, err := q.limits()
	if err != nil {
		return err
	}
	var p auth.UpdateParams
	if p.ExpiresAt, p.ClearExpiry, err = q.expiry(); err != nil {
		return err
	}
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
	if q.Label != nil || q.Grants != nil || q.ValidIPs != nil || q.ExpiresAt != nil {
		if k, err = s.m.Update(r.Context(), id, p); err != nil {
			return keyError(err, id)
		}
	}
	if lim != nil {
		if err := limits.Save(r.Context(), s.st, s.quota, limits.KeyScope(id), *lim); err != nil {
			return err
		}
	}
	s.log.Info("api: key updated", "key_id", k.ID, "label", k.Label, "grants", strings.Join(k.Grants, ","),
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	j, err := s.keyWithUsage(r, k)
	if err != nil {
		return err
	}
	writeResults(w, j)
	return nil
}

// rotateRequest is the optional body of POST /api/v1/api-keys/{id}/rotate.
type rotateRequest struct {
	// Overlap is how long the old key keeps working, a duration such as
	// "24h", "90m" or "7d"; absent: 24h.
	Overlap *string `json:"overlap"`
}

// rotated is the answer to a rotation: the new key (with the key itself,
// shown this once) and what became of the old one.
type rotated struct {
	Key
	// Replaces is the old key: its id and its expiry now.
	Replaces replacedKey `json:"replaces"`
}

type replacedKey struct {
	ID        string `json:"id"`
	ExpiresAt string `json:"expires_at"`
}

// rotateKey answers POST /api/v1/api-keys/{id}/rotate: a new key with the
// old one's label, grants, subaccount, allowed IPs and limits, and the old
// key set to expire after the overlap (body {"overlap": "24h"}, optional).
func (s *server) rotateKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	id := r.PathValue("id")
	var q rotateRequest
	if r.ContentLength != 0 {
		if err := decode(w, r, &q); err != nil {
			return err
		}
	}
	overlap := auth.DefaultOverlap
	if q.Overlap != nil {
		d, err := auth.ParseOverlap(*q.Overlap)
		if err != nil {
			return refused(err)
		}
		overlap = d
	}
	if _, err := s.scopedKey(r, c, id); err != nil {
		return err
	}
	key, k, old, err := s.m.Rotate(r.Context(), id, overlap)
	if err != nil {
		return keyError(err, id)
	}
	s.log.Info("api: key rotated", "key_id", id, "new_key_id", k.ID, "old_expires_at", old.ExpiresAt,
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	j, err := s.keyWithUsage(r, k)
	if err != nil {
		return err
	}
	j.Key = key
	writeResults(w, rotated{Key: j, Replaces: replacedKey{ID: old.ID, ExpiresAt: old.ExpiresAt.UTC().Format(time.RFC3339)}})
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

// grantJSON is one grant in the answers of /api/v1/authenticate[/grants],
// shaped as SparkPost's ({"key": name}); Enforced tells whether the grant
// has an effect in smtpgw.
type grantJSON struct {
	Key      string `json:"key"`
	Enforced bool   `json:"enforced"`
}

func grantObjects(grants []string) []grantJSON {
	out := make([]grantJSON, 0, len(grants))
	for _, g := range grants {
		out = append(out, grantJSON{Key: g, Enforced: auth.IsEnforced(g)})
	}
	return out
}

// grants answers GET /api/v1/authenticate/grants as SparkPost: the grants
// a key of this account may be given, what a console draws as permission
// checkboxes. With ?role=subaccount, or for a subaccount's own key, those
// a subaccount key may hold (no master-only grant).
func (s *server) grants(w http.ResponseWriter, r *http.Request, c *caller) error {
	role := r.URL.Query().Get("role")
	switch role {
	case "", "subaccount":
	default:
		return badRequest("role must be \"subaccount\" or absent, not %q", role)
	}
	if role == "subaccount" || c.id.Subaccount != 0 {
		writeResults(w, grantObjects(auth.SubaccountGrants()))
		return nil
	}
	writeResults(w, grantObjects(auth.AcceptedGrants))
	return nil
}

// whoami answers GET /api/v1/authenticate: the key used, with its grants
// (what /api/v1/authenticate/grants answered before it listed the grants
// to assign).
func (s *server) whoami(w http.ResponseWriter, r *http.Request, c *caller) error {
	writeResults(w, struct {
		ID         string      `json:"id"`
		Label      string      `json:"label"`
		ShortKey   string      `json:"short_key"`
		Subaccount int64       `json:"subaccount_id,omitempty"`
		Grants     []grantJSON `json:"grants"`
	}{c.id.KeyID, c.id.Label, c.id.ShortKey, c.id.Subaccount, grantObjects(c.id.Grants)})
	return nil
}

// limitsSubaccount reads the {id} of /api/v1/subaccounts/{id}/limits: an
// existing subaccount in the caller's scope.
func (s *server) limitsSubaccount(r *http.Request, c *caller) (int64, error) {
	v := r.PathValue("id")
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, notFound("no subaccount %q: subaccount ids are positive numbers", v)
	}
	if !c.scope.has(n) {
		return 0, notFound("no subaccount %d in this request's scope", n)
	}
	if _, err := s.st.GetSubaccount(r.Context(), n); errors.Is(err, store.ErrNotFound) {
		return 0, notFound("no subaccount %d (list them with GET /api/v1/subaccounts)", n)
	} else if err != nil {
		return 0, err
	}
	return n, nil
}

// subaccountLimits is the answer of /api/v1/subaccounts/{id}/limits.
type subaccountLimits struct {
	Subaccount int64            `json:"subaccount_id"`
	Limits     Limits           `json:"limits"`
	Usage      map[string]Usage `json:"usage,omitempty"`
}

func (s *server) writeSubaccountLimits(w http.ResponseWriter, r *http.Request, n int64) error {
	l, us, err := limits.Usages(r.Context(), s.st, limits.SubaccountScope(n), time.Now())
	if err != nil {
		return err
	}
	out := subaccountLimits{Subaccount: n, Usage: NewUsage(us)}
	if j := NewLimits(l); j != nil {
		out.Limits = *j
	}
	writeResults(w, out)
	return nil
}

// getSubaccountLimits answers GET /api/v1/subaccounts/{id}/limits: the
// subaccount's sending limits and their current windows.
func (s *server) getSubaccountLimits(w http.ResponseWriter, r *http.Request, c *caller) error {
	n, err := s.limitsSubaccount(r, c)
	if err != nil {
		return err
	}
	return s.writeSubaccountLimits(w, r, n)
}

// putSubaccountLimits answers PUT /api/v1/subaccounts/{id}/limits with
// body {"limits": {"per_hour": 1000}}: the limits given replace the
// subaccount's ({} removes them). Only a master-account key may: a
// subaccount must not raise its own limits.
func (s *server) putSubaccountLimits(w http.ResponseWriter, r *http.Request, c *caller) error {
	n, err := s.limitsSubaccount(r, c)
	if err != nil {
		return err
	}
	if c.id.Subaccount != 0 {
		return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
			Description: "a subaccount's key cannot change sending limits: use a master-account key"}
	}
	var q keyRequest
	if err := decode(w, r, &q); err != nil {
		return err
	}
	if q.Limits == nil {
		return invalid("limits is required, e.g. {\"limits\": {\"per_hour\": 1000}} ({} removes the limits)")
	}
	lim, err := q.limits()
	if err != nil {
		return err
	}
	if err := limits.Save(r.Context(), s.st, s.quota, limits.SubaccountScope(n), *lim); err != nil {
		return err
	}
	s.log.Info("api: subaccount limits set", "subaccount", n, "limits", limits.String(*lim),
		"by_key", c.id.KeyID, "remote", r.RemoteAddr)
	return s.writeSubaccountLimits(w, r, n)
}
