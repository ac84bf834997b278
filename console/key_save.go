package console

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/console/form"
	"github.com/smtpgw/smtpgw/store"
)

// keyCreatedData is the one-time key page's data.
type keyCreatedData struct {
	// Secret is the new key itself, shown on this page only.
	Secret string
	Key    *store.Key
}

// keySave creates a key with auth.Manager (the API's rules) and answers
// the key itself, once: the page is not cached, the key is in no URL and
// no cookie, and the page's address is replaced by the list's, so a
// reload shows the list.
func (s *Server) keySave(w http.ResponseWriter, r *http.Request, se *session) error {
	f := form.ParseKey(r)
	d := newKeyFormData(se, f)
	sub := f.SubaccountID(d.Errors)
	if se.id.Subaccount != 0 {
		sub = se.id.Subaccount // a subaccount admin creates keys of its own subaccount only
	}
	if len(d.Errors) > 0 {
		s.render(w, r, se, http.StatusUnprocessableEntity, "key_form", &view{Title: "Create API key", Nav: "keys", D: d})
		return nil
	}
	key, k, err := s.m.Create(r.Context(), auth.CreateParams{Label: f.Name, Grants: f.Grants,
		Subaccount: sub, AllowedIPs: f.IPs()})
	if errors.Is(err, auth.ErrInvalid) {
		d.Errors.Add(err)
		s.render(w, r, se, http.StatusUnprocessableEntity, "key_form", &view{Title: "Create API key", Nav: "keys", D: d})
		return nil
	}
	if err != nil {
		return err
	}
	s.log.Info("console: key created", "key_id", k.ID, "label", k.Label, "subaccount", k.Subaccount,
		"grants", strings.Join(k.Grants, ","), "by_key", se.id.KeyID, "remote", r.RemoteAddr)
	s.render(w, r, se, http.StatusOK, "key_created", &view{Title: "API key created", Nav: "keys",
		ReplaceURL: "/keys", D: keyCreatedData{Secret: key, Key: k}})
	return nil
}

func fmtInt(n int64) string { return strconv.FormatInt(n, 10) }
