package console

import (
	"net/http"
)

// keyRemoveConfirm asks for confirmation before a key is deleted.
func (s *Server) keyRemoveConfirm(w http.ResponseWriter, r *http.Request, se *session) error {
	k, err := s.scopedKey(r, se, r.PathValue("id"))
	if err != nil {
		return s.keyNotFound(w, r, se, err)
	}
	s.render(w, r, se, http.StatusOK, "key_delete", &view{Title: "Delete API key", Nav: "keys", D: k})
	return nil
}

// keyRemove deletes (revokes) a key with auth.Manager: this node refuses
// it at once, other nodes within auth.cache_ttl.
func (s *Server) keyRemove(w http.ResponseWriter, r *http.Request, se *session) error {
	id := r.PathValue("id")
	if _, err := s.scopedKey(r, se, id); err != nil {
		return s.keyNotFound(w, r, se, err)
	}
	if err := s.m.Delete(r.Context(), id); err != nil {
		return s.keyNotFound(w, r, se, err)
	}
	s.log.Info("console: key deleted", "key_id", id, "by_key", se.id.KeyID, "remote", r.RemoteAddr)
	seeOther(w, r, "/keys", "key-deleted")
	return nil
}
