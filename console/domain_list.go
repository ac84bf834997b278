package console

import (
	"net/http"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/console/form"
)

// domainListData is the sending domains page's data.
type domainListData struct {
	Domains []api.Domain
	Form    form.Domain
	Errors  form.Errors
	// Master: the admin may share domains with subaccounts.
	Master bool
}

// domainList shows the sending domains in the admin's scope and the form
// to add one.
func (s *Server) domainList(w http.ResponseWriter, r *http.Request, se *session) error {
	return s.renderDomains(w, r, se, http.StatusOK, form.Domain{Algorithm: "rsa"}, form.Errors{})
}

func (s *Server) renderDomains(w http.ResponseWriter, r *http.Request, se *session, status int, f form.Domain, errs form.Errors) error {
	ds, err := s.st.ListDomains(r.Context())
	if err != nil {
		return err
	}
	d := domainListData{Form: f, Errors: errs, Master: se.id.Subaccount == 0}
	for _, dom := range ds {
		if se.scoped(dom.Subaccount) {
			d.Domains = append(d.Domains, api.NewDomain(dom))
		}
	}
	s.render(w, r, se, status, "domains", &view{Title: "Sending domains", Nav: "domains", D: d})
	return nil
}
