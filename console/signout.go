package console

import "net/http"

// signOut ends the session in the store and in the browser.
func (s *Server) signOut(w http.ResponseWriter, r *http.Request, se *session) error {
	s.endSession(r, se.hash)
	clearSessionCookie(w, r)
	s.log.Info("console: signed out", "key_id", se.id.KeyID, "remote", r.RemoteAddr)
	http.Redirect(w, r, "/signin?done=signedout", http.StatusSeeOther)
	return nil
}
