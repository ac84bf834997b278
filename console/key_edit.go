package console

import (
	"errors"
	"net/http"
	"strings"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/console/form"
	"github.com/smtpgw/smtpgw/store"
)

// scopedKey returns the active key id if it is in the admin's scope;
// store.ErrNotFound otherwise, as if it did not exist.
func (s *Server) scopedKey(r *http.Request, se *session, id string) (*store.Key, error) {
	k, err := s.m.Get(r.Context(), id)
	if err == nil && !se.scoped(k.Subaccount) {
		err = store.ErrNotFound
	}
	return k, err
}

// keyNotFound answers a key that is not there (or not the admin's).
func (s *Server) keyNotFound(w http.ResponseWriter, r *http.Request, se *session, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		s.renderError(w, r, se, http.StatusNotFound, "There is no such API key: it was deleted, or belongs to another account.")
		return nil
	}
	return err
}

// keyEdit shows the edit form of a key: name, permissions, allowed IPs.
func (s *Server) keyEdit(w http.ResponseWriter, r *http.Request, se *session) error {
	k, err := s.scopedKey(r, se, r.PathValue("id"))
	if err != nil {
		return s.keyNotFound(w, r, se, err)
	}
	f := form.Key{Name: k.Label, Grants: k.Grants, Subaccount: fmtInt(k.Subaccount),
		AllowedIPs: strings.Join(api.PrefixStrings(k.AllowedIPs), ", ")}
	d := newKeyFormData(se, f)
	d.ID, d.ShortKey = k.ID, k.ShortKey
	s.render(w, r, se, http.StatusOK, "key_form", &view{Title: "Edit API key", Nav: "keys", D: d})
	return nil
}
