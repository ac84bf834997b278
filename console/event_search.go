package console

import (
	"net/http"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/console/form"
	"github.com/smtpgw/smtpgw/store"
)

const (
	// eventsShown is the most events the page lists.
	eventsShown = 200
	// eventsScanned is how many of the newest events matching the store's
	// filters (message id, type, time, account) are searched for a
	// recipient or campaign, which the store does not filter on.
	eventsScanned = 5000
	// defaultEventsSince: without From, the last day is searched, as the API.
	defaultEventsSince = 24 * time.Hour
)

// eventTypes are the types offered in the search form.
var eventTypes = []string{store.EventInjection, store.EventDelivery, store.EventDelay, store.EventBounce,
	store.EventOutOfBand, store.EventExpiry, store.EventPolicyRejection}

// eventData is the events page's data.
type eventData struct {
	Form   form.Events
	Errors form.Errors
	Types  []string
	Events []store.Event
	// Since is the start of the period searched.
	Since time.Time
	// More: more events matched than are shown.
	More bool
}

// eventSearch searches message events by recipient, message id, campaign,
// type and time, newest first, in the admin's scope.
func (s *Server) eventSearch(w http.ResponseWriter, r *http.Request, se *session) error {
	d := eventData{Errors: form.Errors{}, Types: eventTypes}
	d.Form = form.ParseEvents(r, d.Errors)
	if d.Form.Type != "" && !contains(eventTypes, d.Form.Type) {
		d.Errors["type"] = "Unknown event type: choose one from the list."
	}
	status := http.StatusOK
	if len(d.Errors) > 0 {
		status = http.StatusUnprocessableEntity
	} else {
		f := store.EventFilter{MessageID: d.Form.MessageID, Subaccount: se.scope(), Since: d.Form.Since, Limit: eventsScanned}
		if f.Since.IsZero() {
			f.Since = time.Now().Add(-defaultEventsSince)
		}
		d.Since = f.Since
		if d.Form.Type != "" {
			f.Types = []string{d.Form.Type}
		}
		evs, err := s.st.ListEvents(r.Context(), f)
		if err != nil {
			return err
		}
		rcpt := strings.ToLower(d.Form.Recipient)
		for _, ev := range evs {
			if rcpt != "" && !strings.Contains(strings.ToLower(ev.Recipient), rcpt) ||
				d.Form.Campaign != "" && ev.CampaignID != d.Form.Campaign {
				continue
			}
			if len(d.Events) == eventsShown {
				d.More = true
				break
			}
			d.Events = append(d.Events, ev)
		}
	}
	s.render(w, r, se, status, "events", &view{Title: "Events", Nav: "events", D: d})
	return nil
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
