package console

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/console/form"
)

// domainSave adds a sending domain with api.CreateDomain (the API's rules
// and DKIM key generation) for the admin's account, then shows its DKIM
// record.
func (s *Server) domainSave(w http.ResponseWriter, r *http.Request, se *session) error {
	f := form.ParseDomain(r)
	d, err := api.CreateDomain(r.Context(), s.st, s.selector, api.DomainParams{Domain: f.Domain,
		Algorithm: f.Algorithm, Shared: f.Shared, Subaccount: se.id.Subaccount})
	var refused *api.Error
	if errors.As(err, &refused) {
		errs := form.Errors{}
		errs.Add(err)
		return s.renderDomains(w, r, se, refused.Status, f, errs)
	}
	if err != nil {
		return err
	}
	s.log.Info("console: sending domain created", "domain", d.Name, "subaccount", d.Subaccount, "shared", d.Shared,
		"by_key", se.id.KeyID, "remote", r.RemoteAddr)
	seeOther(w, r, "/domains/"+url.PathEscape(d.Name), "domain-added")
	return nil
}
