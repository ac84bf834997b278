package console

import (
	"net/http"
	"net/url"
)

// queueRetry makes a message's queued and deferred recipients due now.
func (s *Server) queueRetry(w http.ResponseWriter, r *http.Request, se *session) error {
	m, err := s.scopedMessage(r, se)
	if err != nil {
		return s.messageNotFound(w, r, se, err)
	}
	n, err := s.st.RetryMessage(r.Context(), m.ID)
	if err != nil {
		return s.messageNotFound(w, r, se, err)
	}
	s.log.Info("console: message retried", "message_id", m.ID, "recipients", n, "by_key", se.id.KeyID, "remote", r.RemoteAddr)
	seeOther(w, r, "/queue/"+url.PathEscape(m.ID), "retried")
	return nil
}
