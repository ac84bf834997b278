package console

import (
	"errors"
	"net/http"
	"strings"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/console/form"
)

// keyUpdate saves the edit form with auth.Manager: the name, the
// permissions and the allowed IPs (empty: any address) replace the key's.
// A key keeps its subaccount.
func (s *Server) keyUpdate(w http.ResponseWriter, r *http.Request, se *session) error {
	id := r.PathValue("id")
	orig, err := s.scopedKey(r, se, id)
	if err != nil {
		return s.keyNotFound(w, r, se, err)
	}
	f := form.ParseKey(r)
	f.Subaccount = fmtInt(orig.Subaccount)
	p := auth.UpdateParams{Label: &f.Name, Grants: f.Grants}
	if p.Grants == nil {
		p.Grants = []string{} // no box ticked: refused by the Manager as "no grant given"
	}
	if ips := f.IPs(); len(ips) > 0 {
		p.AllowedIPs = ips
	} else {
		p.ClearAllowedIPs = true
	}
	k, err := s.m.Update(r.Context(), id, p)
	if errors.Is(err, auth.ErrInvalid) {
		d := newKeyFormData(se, f)
		d.ID, d.ShortKey = id, orig.ShortKey
		d.Errors.Add(err)
		s.render(w, r, se, http.StatusUnprocessableEntity, "key_form", &view{Title: "Edit API key", Nav: "keys", D: d})
		return nil
	}
	if err != nil {
		return s.keyNotFound(w, r, se, err)
	}
	s.log.Info("console: key updated", "key_id", k.ID, "label", k.Label, "grants", strings.Join(k.Grants, ","),
		"by_key", se.id.KeyID, "remote", r.RemoteAddr)
	seeOther(w, r, "/keys", "key-updated")
	return nil
}
