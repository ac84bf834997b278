package console

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/store"
)

// keysPerPage is the length of a page of the key list.
const keysPerPage = 50

// keyListData is the key list page's data.
type keyListData struct {
	Keys []*store.Key
	// Query and Grant are the search: a part of the name, a permission.
	Query, Grant string
	Grants       []string
	// FirstURL and NextURL link the first and the next page ("" if none).
	FirstURL, NextURL string
	// ShowSubaccount: the admin sees several accounts.
	ShowSubaccount bool
	// BadCursor: the page link was not one the console made.
	BadCursor bool
}

// keyList shows a page of the keys in the admin's scope, oldest first,
// searched by ?q= (a part of the name) and ?grant= (a permission). Pages
// are read from the store with a cursor (?after=), so the list stays fast
// with many thousands of keys.
func (s *Server) keyList(w http.ResponseWriter, r *http.Request, se *session) error {
	q := r.URL.Query()
	d := keyListData{Query: strings.TrimSpace(q.Get("q")), Grant: q.Get("grant"),
		Grants: auth.AcceptedGrants, ShowSubaccount: se.id.Subaccount == 0}
	f := store.KeyFilter{Label: d.Query, Grant: d.Grant, Subaccount: se.scope(), Limit: keysPerPage,
		Cursor: q.Get("after")}
	keys, next, err := s.m.List(r.Context(), f)
	if errors.Is(err, auth.ErrInvalid) { // a cursor the console did not make: start over
		d.BadCursor = true
		f.Cursor = ""
		keys, next, err = s.m.List(r.Context(), f)
	}
	if err != nil {
		return err
	}
	d.Keys = keys
	link := func(after string) string {
		v := url.Values{}
		if d.Query != "" {
			v.Set("q", d.Query)
		}
		if d.Grant != "" {
			v.Set("grant", d.Grant)
		}
		if after != "" {
			v.Set("after", after)
		}
		if len(v) == 0 {
			return "/keys"
		}
		return "/keys?" + v.Encode()
	}
	if f.Cursor != "" {
		d.FirstURL = link("")
	}
	if next != "" {
		d.NextURL = link(next)
	}
	s.render(w, r, se, http.StatusOK, "keys", &view{Title: "API keys", Nav: "keys", D: d})
	return nil
}
