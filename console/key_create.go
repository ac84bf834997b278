package console

import (
	"net/http"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/console/form"
)

// keyFormData is the create and edit page's data.
type keyFormData struct {
	// ID is the key edited ("" when creating); ShortKey its first four
	// characters.
	ID, ShortKey string
	Form         form.Key
	Errors       form.Errors
	// Enforced and Inert are the grants offered, as checkboxes.
	Enforced, Inert []string
	// FixedSubaccount: the admin's key belongs to a subaccount, so new
	// keys do too and the field is read-only.
	FixedSubaccount bool
}

// inertGrants are the accepted grants that have no effect in smtpgw.
func inertGrants() []string {
	return auth.AcceptedGrants[len(auth.EnforcedGrants):]
}

// newKeyFormData returns the form's data: the grants offered are those
// the admin's new keys may hold (a subaccount admin's keys belong to its
// subaccount, which may not hold master-only grants).
func newKeyFormData(se *session, f form.Key) keyFormData {
	d := keyFormData{Form: f, Errors: form.Errors{}, Enforced: auth.EnforcedGrants, Inert: inertGrants(),
		FixedSubaccount: se.id.Subaccount != 0}
	if d.FixedSubaccount {
		allowed := auth.SubaccountGrants()
		keep := func(gs []string) []string {
			var out []string
			for _, g := range gs {
				if contains(allowed, g) {
					out = append(out, g)
				}
			}
			return out
		}
		d.Enforced, d.Inert = keep(d.Enforced), keep(d.Inert)
	}
	return d
}

// keyCreate shows the Create API key form.
func (s *Server) keyCreate(w http.ResponseWriter, r *http.Request, se *session) error {
	f := form.Key{Grants: []string{auth.GrantSMTPInject}}
	if se.id.Subaccount != 0 {
		f.Subaccount = fmtInt(se.id.Subaccount)
	}
	s.render(w, r, se, http.StatusOK, "key_form", &view{Title: "Create API key", Nav: "keys", D: newKeyFormData(se, f)})
	return nil
}
