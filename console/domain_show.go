package console

import (
	"errors"
	"net/http"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/store"
)

// scopedDomain returns the sending domain named by the path if it is the
// admin's; store.ErrNotFound otherwise.
func (s *Server) scopedDomain(r *http.Request, se *session) (*store.Domain, error) {
	name, err := api.NormalizeDomain(r.PathValue("name"))
	if err != nil {
		return nil, store.ErrNotFound
	}
	d, err := s.st.GetDomain(r.Context(), name)
	if err == nil && !se.scoped(d.Subaccount) {
		err = store.ErrNotFound
	}
	return d, err
}

func (s *Server) domainNotFound(w http.ResponseWriter, r *http.Request, se *session, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		s.renderError(w, r, se, http.StatusNotFound, "There is no such sending domain: it was deleted, or belongs to another account.")
		return nil
	}
	return err
}

// domainShow shows a sending domain and the DKIM TXT record to publish.
func (s *Server) domainShow(w http.ResponseWriter, r *http.Request, se *session) error {
	d, err := s.scopedDomain(r, se)
	if err != nil {
		return s.domainNotFound(w, r, se, err)
	}
	s.render(w, r, se, http.StatusOK, "domain", &view{Title: d.Name, Nav: "domains", D: api.NewDomain(d)})
	return nil
}
