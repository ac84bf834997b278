package console

import (
	"net/http"
	"net/url"
	"time"

	"github.com/smtpgw/smtpgw/console/form"
	"github.com/smtpgw/smtpgw/store"
)

const (
	// eventsPerPage is the length of a page of events.
	eventsPerPage = 100
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
	// FirstURL and NextURL link the first and the next page ("" if none).
	FirstURL, NextURL string
}

// eventSearch searches message events by recipient, message id, campaign,
// type and time in the admin's scope, newest first, a page at a time
// (store.SearchEvents, the API's search).
func (s *Server) eventSearch(w http.ResponseWriter, r *http.Request, se *session) error {
	d := eventData{Errors: form.Errors{}, Types: eventTypes}
	d.Form = form.ParseEvents(r, d.Errors)
	f := d.Form
	q := store.EventSearch{From: f.Since, To: f.Until, Limit: eventsPerPage}
	if f.Type != "" {
		if !contains(eventTypes, f.Type) {
			d.Errors["type"] = "Unknown event type: choose one from the list."
		}
		q.Types = []string{f.Type}
	}
	if f.After != "" {
		c, err := store.ParseEventCursor(f.After)
		if err != nil {
			d.Errors[""] = "That page link is not valid any more: search again."
		}
		q.After = &c
	}
	if len(d.Errors) > 0 {
		s.render(w, r, se, http.StatusUnprocessableEntity, "events", &view{Title: "Events", Nav: "events", D: d})
		return nil
	}
	if q.From.IsZero() {
		q.From = time.Now().Add(-defaultEventsSince)
	}
	d.Since = q.From
	if f.Recipient != "" {
		q.Recipients = []string{f.Recipient}
	}
	if f.MessageID != "" {
		q.MessageIDs = []string{f.MessageID}
	}
	if f.Campaign != "" {
		q.CampaignIDs = []string{f.Campaign}
	}
	if sub := se.scope(); sub != nil {
		q.Subaccounts = []int64{*sub}
	}
	page, err := s.st.SearchEvents(r.Context(), q)
	if err != nil {
		return err
	}
	d.Events = page.Events
	link := func(after string) string {
		v := url.Values{}
		for k, val := range map[string]string{"recipient": f.Recipient, "message_id": f.MessageID,
			"campaign": f.Campaign, "type": f.Type, form.FieldTime: f.From, form.FieldUntil: f.To, "after": after} {
			if val != "" {
				v.Set(k, val)
			}
		}
		return "/events?" + v.Encode()
	}
	if f.After != "" {
		d.FirstURL = link("")
	}
	if page.Next != nil {
		d.NextURL = link(page.Next.String())
	}
	s.render(w, r, se, http.StatusOK, "events", &view{Title: "Events", Nav: "events", D: d})
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
