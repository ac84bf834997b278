package api

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

const (
	// defaultPerPage and maxPerPage bound GET /api/v1/events/message
	// (SparkPost's defaults).
	defaultPerPage = 1000
	maxPerPage     = 10000
	// defaultEventsFrom is how far back events are listed without from
	// (SparkPost: 24 hours).
	defaultEventsFrom = 24 * time.Hour
	// maxEventQueries caps the store queries one request makes: one per
	// combination of the message_ids and subaccounts given.
	maxEventQueries = 100
)

// eventTypes are the values accepted in ?events=: smtpgw's types and
// SparkPost's other message event types, which smtpgw never records (they
// select nothing, so scripts asking for them keep working).
var eventTypes = []string{
	store.EventInjection, store.EventDelivery, store.EventDelay, store.EventBounce,
	store.EventOutOfBand, store.EventExpiry, store.EventPolicyRejection,
	"spam_complaint", "generation_failure", "generation_rejection", "open", "initial_open",
	"amp_open", "amp_initial_open", "click", "amp_click", "list_unsubscribe", "link_unsubscribe",
	"ab_test_completed", "ab_test_cancelled", "success", "sms_status", "relay_injection",
	"relay_rejection", "relay_delivery", "relay_tempfail", "relay_permfail",
}

// unsupportedEventParams are SparkPost's filters of the message events API
// that smtpgw cannot apply. They are refused rather than ignored: ignoring
// a filter would answer events the client did not ask for.
var unsupportedEventParams = []string{
	"to", "cursor", "page", "recipients", "recipient_domains", "campaigns", "campaign_ids",
	"templates", "template_ids", "transmissions", "transmission_ids", "sending_ips", "ip_pools",
	"sending_domains", "subjects", "from_addresses", "friendly_froms", "bounce_classes",
	"reasons", "ab_tests", "ab_test_versions", "mailbox_providers", "mailbox_provider_regions",
	"timezone",
}

// events answers GET /api/v1/events/message, newest first. Query
// parameters, as SparkPost's: events (comma list of types), message_ids
// and subaccounts (comma lists), from (RFC 3339 or SparkPost's
// YYYY-MM-DDTHH:MM in UTC; default 24 hours ago) and per_page (default
// 1000, at most 10000). X-MSYS-SUBACCOUNT scopes the request as elsewhere;
// subaccounts then must lie within that scope.
func (s *server) events(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	for _, p := range unsupportedEventParams {
		if q.Has(p) {
			return badRequest("parameter %s is not supported by smtpgw; supported: events, message_ids, subaccounts, from, per_page", p)
		}
	}
	f := store.EventFilter{Since: time.Now().Add(-defaultEventsFrom), Limit: defaultPerPage}
	var err error
	if f.Types, err = eventTypeList(q); err != nil {
		return err
	}
	if v := q.Get("from"); v != "" {
		if f.Since, err = parseTime(v); err != nil {
			return badRequest("from: %v", err)
		}
	}
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPerPage {
			return badRequest("per_page must be a number from 1 to %d, not %q", maxPerPage, v)
		}
		f.Limit = n
	}
	ids := list(q.Get("message_ids"))
	subs, err := subaccountList(q.Get("subaccounts"), c.scope)
	if err != nil {
		return err
	}
	if max(len(ids), 1)*max(len(subs), 1) > maxEventQueries {
		return badRequest("too many message_ids × subaccounts combinations (at most %d): split the request", maxEventQueries)
	}

	var evs []store.Event
	for _, id := range orAll(ids, "") {
		for _, sub := range orAll(subs, nil) {
			g := f
			g.MessageID, g.Subaccount = id, sub
			got, err := s.st.ListEvents(r.Context(), g)
			if err != nil {
				return err
			}
			evs = append(evs, got...)
		}
	}
	// Several queries each gave their newest events: merge, keep the newest.
	slices.SortStableFunc(evs, func(a, b store.Event) int {
		return cmp.Or(b.Time.Compare(a.Time), cmp.Compare(b.ID, a.ID))
	})
	if len(evs) > f.Limit {
		evs = evs[:f.Limit]
	}
	out := make([]Event, 0, len(evs))
	for _, ev := range evs {
		out = append(out, NewEvent(ev))
	}
	writeResults(w, out)
	return nil
}

// orAll returns vs, or a one-element list of all when vs is empty.
func orAll[T any](vs []T, all T) []T {
	if len(vs) == 0 {
		return []T{all}
	}
	return vs
}

// list splits a comma-separated parameter, dropping empty entries and
// duplicates.
func list(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// eventTypeList parses ?events=.
func eventTypeList(q url.Values) ([]string, error) {
	types := list(q.Get("events"))
	for _, t := range types {
		if !slices.Contains(eventTypes, t) {
			return nil, badRequest("events: unknown event type %q; smtpgw records %s", t,
				strings.Join(eventTypes[:7], ", "))
		}
	}
	return types, nil
}

// subaccountList parses ?subaccounts= within scope. It returns the
// subaccount filters to query: nil for "every account", which only an
// unscoped master request gets.
func subaccountList(v string, sc scope) ([]*int64, error) {
	var subs []*int64
	for _, s := range list(v) {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return nil, badRequest("subaccounts must be a comma list of subaccount ids (0: master account), not %q", v)
		}
		if !sc.has(n) {
			return nil, &Error{Status: http.StatusForbidden, Message: "Forbidden.",
				Description: fmt.Sprintf("subaccount %d is outside this request's scope (subaccount %d)", n, sc.sub)}
		}
		subs = append(subs, &n)
	}
	if len(subs) == 0 && !sc.all {
		n := sc.sub
		subs = []*int64{&n}
	}
	return subs, nil
}

// timeLayouts are the forms accepted for from: RFC 3339 and SparkPost's
// YYYY-MM-DDTHH:MM (UTC).
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02"}

// parseTime parses a from parameter.
func parseTime(v string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.ParseInLocation(l, v, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-11-23T14:00:00Z) or YYYY-MM-DDTHH:MM in UTC", v)
}
