package console

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/auth"
)

// signInData is the sign-in page's data.
type signInData struct {
	// Error is shown beside the API key field.
	Error string
	// Ended says why the previous session ended.
	Ended string
}

// endedText explains ?ended= on the sign-in page.
var endedText = map[string]string{
	endedIdle:    "Your session ended after a period without activity. Sign in again.",
	endedRevoked: "Your session ended: its API key was deleted or expired, lost the api_keys/manage permission, does not allow this address, or belongs to a suspended subaccount.",
}

// signInForm shows the sign-in page with a fresh CSRF token, doubled in a
// cookie (there is no session to bind it to yet); a signed-in admin goes
// to the key list instead.
func (s *Server) signInForm(w http.ResponseWriter, r *http.Request) {
	if se, _, err := s.loadSession(r); err == nil && se != nil {
		http.Redirect(w, r, "/keys", http.StatusSeeOther) // already signed in
		return
	}
	s.renderSignIn(w, r, http.StatusOK, signInData{Ended: endedText[r.URL.Query().Get("ended")]})
}

func (s *Server) renderSignIn(w http.ResponseWriter, r *http.Request, status int, d signInData) {
	token := newToken()
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: token, Path: "/signin", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	s.render(w, r, nil, status, "signin", &view{Title: "Sign in", CSRF: token, D: d})
}

// signIn checks the API key as the API would (allowed IPs, failure
// throttle) for api_keys/manage and starts a session.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(signInCookie)
	form := r.PostFormValue(csrfField)
	if err != nil || form == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(form)) != 1 {
		s.log.Info("console: refused sign-in without a valid CSRF token", "remote", r.RemoteAddr)
		s.renderSignIn(w, r, http.StatusForbidden, signInData{
			Error: "This form was not sent by this console page (its security token is missing or wrong). Try again."})
		return
	}
	key := strings.TrimSpace(r.PostFormValue("key"))
	if key == "" {
		s.renderSignIn(w, r, http.StatusUnprocessableEntity, signInData{Error: "Enter an API key that has the api_keys/manage permission."})
		return
	}
	id, err := s.kc.CheckKey(r, key, auth.GrantAPIKeysManage)
	var refused *api.Error
	switch {
	case errors.As(err, &refused):
		msg := "This API key is unknown, deleted, or not allowed from this address."
		switch refused.Status {
		case http.StatusForbidden:
			msg = "This API key does not have the api_keys/manage permission the console needs."
		case http.StatusTooManyRequests:
			msg = "Too many failed sign-ins came from this address. Wait a few minutes and try again."
			if refused.RetryAfter > 0 {
				w.Header().Set("Retry-After", api.RetryAfterSeconds(refused.RetryAfter))
			}
		case http.StatusServiceUnavailable:
			msg = "The database does not answer. Try again in a moment."
		}
		s.renderSignIn(w, r, refused.Status, signInData{Error: msg})
		return
	case err != nil:
		s.fail(w, r, nil, err)
		return
	}
	if err := s.startSession(w, r, key, id); err != nil {
		s.fail(w, r, nil, err)
		return
	}
	s.log.Info("console: signed in", "key_id", id.KeyID, "subaccount", id.Subaccount, "remote", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: "", Path: "/signin", MaxAge: -1, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/keys", http.StatusSeeOther)
}
