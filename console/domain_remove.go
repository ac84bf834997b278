package console

import (
	"net/http"

	"github.com/smtpgw/smtpgw/api"
)

// domainRemoveConfirm asks for confirmation before a domain is deleted.
func (s *Server) domainRemoveConfirm(w http.ResponseWriter, r *http.Request, se *session) error {
	d, err := s.scopedDomain(r, se)
	if err != nil {
		return s.domainNotFound(w, r, se, err)
	}
	s.render(w, r, se, http.StatusOK, "domain_delete", &view{Title: "Delete sending domain", Nav: "domains", D: api.NewDomain(d)})
	return nil
}

// domainRemove deletes a sending domain (and its DKIM key).
func (s *Server) domainRemove(w http.ResponseWriter, r *http.Request, se *session) error {
	d, err := s.scopedDomain(r, se)
	if err != nil {
		return s.domainNotFound(w, r, se, err)
	}
	if err := s.st.DeleteDomain(r.Context(), d.Name); err != nil {
		return s.domainNotFound(w, r, se, err)
	}
	s.log.Info("console: sending domain deleted", "domain", d.Name, "by_key", se.id.KeyID, "remote", r.RemoteAddr)
	seeOther(w, r, "/domains", "domain-deleted")
	return nil
}
