package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/smtpgw/smtpgw/events"
)

// eventsPage is the answer of GET /api/v1/events/message: SparkPost's
// results, total_count and links.next.
type eventsPage struct {
	Results    []events.Event `json:"results"`
	TotalCount int64          `json:"total_count"`
	Links      eventLinks     `json:"links"`
}

type eventLinks struct {
	// Next is the path and query of the next page; absent on the last.
	Next string `json:"next,omitempty"`
}

// events answers GET /api/v1/events/message (and SparkPost's older
// /api/v1/message-events), newest first, with SparkPost's filters (see
// events.ParseSearch) and cursor paging: links.next carries the cursor of
// the next page and the same filters. X-MSYS-SUBACCOUNT scopes the request
// as elsewhere; subaccounts then must lie within that scope.
func (s *server) events(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	search, err := events.ParseSearch(q, time.Now())
	if err != nil {
		return badRequest("%v", err)
	}
	for _, n := range search.Subaccounts {
		if !c.scope.has(n) {
			return &Error{Status: http.StatusForbidden, Message: "Forbidden.",
				Description: fmt.Sprintf("subaccount %d is outside this request's scope (subaccount %d)", n, c.scope.sub)}
		}
	}
	switch {
	case len(search.Subaccounts) > 0:
		search.Store.Subaccounts = search.Subaccounts
	case !c.scope.all:
		search.Store.Subaccounts = []int64{c.scope.sub}
	}
	p, err := s.st.SearchEvents(r.Context(), search.Store)
	if err != nil {
		return err
	}
	out := eventsPage{Results: make([]events.Event, 0, len(p.Events)), TotalCount: p.Total}
	for _, ev := range p.Events {
		out.Results = append(out.Results, events.New(ev))
	}
	if next := events.NextQuery(q, p, search.Store.From); next != "" {
		out.Links.Next = r.URL.Path + "?" + next
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// maxPerPage bounds per_page of the paged listings (SparkPost's 10,000).
const maxPerPage = events.MaxPerPage

// parseTime parses a from or to parameter (see events.ParseTime).
func parseTime(v string) (time.Time, error) { return events.ParseTime(v) }
