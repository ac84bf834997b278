package console

import "net/http"

// queueRemoveConfirm asks for confirmation before a message is deleted.
func (s *Server) queueRemoveConfirm(w http.ResponseWriter, r *http.Request, se *session) error {
	m, err := s.scopedMessage(r, se)
	if err != nil {
		return s.messageNotFound(w, r, se, err)
	}
	m.Body = nil
	s.render(w, r, se, http.StatusOK, "message_delete", &view{Title: "Delete message", Nav: "queue", D: m})
	return nil
}

// queueRemove deletes a message and its recipients from the queue (its
// events stay).
func (s *Server) queueRemove(w http.ResponseWriter, r *http.Request, se *session) error {
	m, err := s.scopedMessage(r, se)
	if err != nil {
		return s.messageNotFound(w, r, se, err)
	}
	if err := s.st.DeleteMessage(r.Context(), m.ID); err != nil {
		return s.messageNotFound(w, r, se, err)
	}
	s.log.Info("console: message deleted", "message_id", m.ID, "by_key", se.id.KeyID, "remote", r.RemoteAddr)
	seeOther(w, r, "/queue", "msg-deleted")
	return nil
}
