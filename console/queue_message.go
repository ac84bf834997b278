package console

import (
	"errors"
	"net/http"

	"github.com/smtpgw/smtpgw/store"
)

// messageData is a queued message's page data.
type messageData struct {
	Msg    *store.Message
	Events []store.Event
}

// scopedMessage returns the message named by the path if it is the
// admin's; store.ErrNotFound otherwise.
func (s *Server) scopedMessage(r *http.Request, se *session) (*store.Message, error) {
	m, err := s.st.GetMessage(r.Context(), r.PathValue("id"))
	if err == nil && !se.scoped(m.Subaccount) {
		err = store.ErrNotFound
	}
	return m, err
}

func (s *Server) messageNotFound(w http.ResponseWriter, r *http.Request, se *session, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		s.renderError(w, r, se, http.StatusNotFound,
			"There is no such message in the queue: it was delivered and pruned, deleted, or belongs to another account.")
		return nil
	}
	return err
}

// queueMessage shows a message's envelope, recipients and events.
func (s *Server) queueMessage(w http.ResponseWriter, r *http.Request, se *session) error {
	m, err := s.scopedMessage(r, se)
	if err != nil {
		return s.messageNotFound(w, r, se, err)
	}
	m.Body = nil // not shown
	evs, err := s.st.ListEvents(r.Context(), store.EventFilter{MessageID: m.ID, Subaccount: se.scope(), Limit: 500})
	if err != nil {
		return err
	}
	s.render(w, r, se, http.StatusOK, "message", &view{Title: "Message " + m.ID, Nav: "queue",
		D: messageData{Msg: m, Events: evs}})
	return nil
}
