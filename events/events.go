// Package events is the message events capability seen from outside: the
// JSON shape of a stored event with SparkPost's field names (what the
// events API, `smtpgw events --json` and webhook batches carry), and the
// parsing of SparkPost's search parameters into a store search with cursor
// paging.
//
// Contract: [New] renders every event the same way wherever it is shown;
// [ParseSearch] accepts SparkPost's filters (events, recipients,
// message_ids, campaign_ids, subaccounts, from, to, per_page, cursor) and
// refuses the ones smtpgw cannot apply, rather than silently answering
// events the client did not ask for.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// Event is a message event with SparkPost's field names. Numbers that
// SparkPost sends as JSON strings (event_id, bounce_class, error_code,
// msg_size, num_retries, queue_time) are strings here too, so clients
// written for SparkPost parse them unchanged. Fields that do not apply to
// an event's type are left out.
type Event struct {
	Type      string `json:"type"`      // e.g. "delivery"
	Timestamp string `json:"timestamp"` // RFC 3339, UTC
	EventID   int64  `json:"event_id,string"`
	MessageID string `json:"message_id"` // queue id
	KeyID     string `json:"api_key_id"` // the injecting API key
	// Subaccount is the message's subaccount (0: master account).
	Subaccount int64           `json:"subaccount_id"`
	Recipient  string          `json:"rcpt_to"`
	RawRcptTo  string          `json:"raw_rcpt_to,omitempty"`
	RcptType   string          `json:"rcpt_type,omitempty"` // to, cc, bcc, archive
	CampaignID string          `json:"campaign_id"`
	Metadata   json.RawMessage `json:"rcpt_meta,omitempty"` // X-MSYS-API metadata
	Tags       []string        `json:"rcpt_tags,omitempty"` // X-MSYS-API tags
	// RawReason is the SMTP reply or local reason, as received.
	RawReason string `json:"raw_reason"`
	// Reason is RawReason for failures (bounce, delay, expiry, ...).
	Reason        string `json:"reason,omitempty"`
	BounceClass   string `json:"bounce_class,omitempty"` // package bounce
	ErrorCode     string `json:"error_code,omitempty"`   // e.g. "550"
	MsgFrom       string `json:"msg_from,omitempty"`     // envelope sender
	FriendlyFrom  string `json:"friendly_from,omitempty"`
	Subject       string `json:"subject,omitempty"`
	MsgSize       string `json:"msg_size,omitempty"`
	IPAddress     string `json:"ip_address,omitempty"` // injecting client
	SendingIP     string `json:"sending_ip,omitempty"`
	RemoteHost    string `json:"remote_host,omitempty"` // smtpgw: the MTA that answered
	RoutingDomain string `json:"routing_domain,omitempty"`
	NumRetries    string `json:"num_retries,omitempty"`
	QueueTime     string `json:"queue_time,omitempty"` // milliseconds
	// InjectionTime is when the message was accepted.
	InjectionTime string `json:"injection_time,omitempty"`
	DelvMethod    string `json:"delv_method,omitempty"` // "esmtp" on relay events
	RecvMethod    string `json:"recv_method,omitempty"` // "esmtp" on injection
}

// failureTypes are the types whose reply is a failure reason.
var failureTypes = []string{store.EventBounce, store.EventDelay, store.EventExpiry, store.EventOutOfBand, store.EventPolicyRejection}

// New returns the JSON shape of a stored event.
func New(ev store.Event) Event {
	d := ev.Detail
	j := Event{
		Type:          ev.Type,
		Timestamp:     ev.Time.UTC().Format(time.RFC3339Nano),
		EventID:       ev.ID,
		MessageID:     ev.MessageID,
		KeyID:         ev.KeyID,
		Subaccount:    ev.Subaccount,
		Recipient:     ev.Recipient,
		RcptType:      d.RcptType,
		CampaignID:    ev.CampaignID,
		RawReason:     ev.Reply,
		ErrorCode:     d.ErrorCode,
		MsgFrom:       d.MsgFrom,
		FriendlyFrom:  d.FriendlyFrom,
		Subject:       d.Subject,
		IPAddress:     d.IPAddress,
		SendingIP:     d.SendingIP,
		RemoteHost:    d.RemoteHost,
		RoutingDomain: d.RoutingDomain,
	}
	if d.RcptType != "" {
		j.RawRcptTo = ev.Recipient
	}
	if len(ev.Metadata) > 0 {
		j.Metadata = ev.Metadata
	}
	if len(ev.Tags) > 0 {
		j.Tags = ev.Tags
	}
	if slices.Contains(failureTypes, ev.Type) {
		j.Reason = ev.Reply
	}
	if d.BounceClass != 0 {
		j.BounceClass = strconv.Itoa(d.BounceClass)
	}
	if d.MsgSize > 0 {
		j.MsgSize = strconv.FormatInt(d.MsgSize, 10)
	}
	if !d.InjectionTime.IsZero() {
		j.InjectionTime = d.InjectionTime.UTC().Format(time.RFC3339Nano)
	}
	switch ev.Type {
	case store.EventInjection:
		j.RecvMethod = "esmtp"
	case store.EventDelivery, store.EventBounce, store.EventDelay, store.EventExpiry:
		j.DelvMethod = "esmtp"
		j.NumRetries = strconv.Itoa(d.NumRetries)
		j.QueueTime = strconv.FormatInt(d.QueueTime, 10)
	}
	return j
}

// Limits of a search (SparkPost's).
const (
	DefaultPerPage = 1000
	MaxPerPage     = 10000
	// DefaultFrom is how far back a search goes without from.
	DefaultFrom = 24 * time.Hour
)

// Types are the values accepted in ?events=: smtpgw's types and SparkPost's
// other message event types, which smtpgw never records (they select
// nothing, so scripts asking for them keep working).
var Types = []string{
	store.EventInjection, store.EventDelivery, store.EventDelay, store.EventBounce,
	store.EventOutOfBand, store.EventExpiry, store.EventPolicyRejection,
	"spam_complaint", "generation_failure", "generation_rejection", "open", "initial_open",
	"amp_open", "amp_initial_open", "click", "amp_click", "list_unsubscribe", "link_unsubscribe",
	"ab_test_completed", "ab_test_cancelled", "success", "sms_status", "relay_injection",
	"relay_rejection", "relay_delivery", "relay_tempfail", "relay_permfail",
}

// Recorded are the types smtpgw records.
var Recorded = Types[:7]

// unsupported are SparkPost's filters smtpgw cannot apply. They are refused
// rather than ignored: ignoring a filter would answer events the client
// did not ask for.
var unsupported = []string{
	"page", "recipient_domains", "campaigns", "templates", "template_ids", "transmissions",
	"transmission_ids", "sending_ips", "ip_pools", "sending_domains", "subjects", "from_addresses",
	"friendly_froms", "bounce_classes", "reasons", "ab_tests", "ab_test_versions", "mailbox_providers",
	"mailbox_provider_regions", "timezone",
}

// ParamError is a search parameter that is wrong; its text says how to fix it.
type ParamError struct{ Msg string }

func (e *ParamError) Error() string { return e.Msg }

func paramErrorf(format string, args ...any) error {
	return &ParamError{Msg: fmt.Sprintf(format, args...)}
}

// Search is a parsed events search. Subaccounts are the ids asked for in
// ?subaccounts=; the caller decides whether its scope allows them and puts
// the final list in Store.Subaccounts.
type Search struct {
	Store       store.EventSearch
	Subaccounts []int64
}

// ParseSearch parses SparkPost's search parameters, relative to now.
func ParseSearch(q url.Values, now time.Time) (*Search, error) {
	for _, p := range unsupported {
		if q.Has(p) {
			return nil, paramErrorf("parameter %s is not supported by smtpgw; supported: events, recipients, message_ids, campaign_ids, subaccounts, from, to, per_page, cursor", p)
		}
	}
	s := &Search{Store: store.EventSearch{From: now.Add(-DefaultFrom), Limit: DefaultPerPage, Count: true}}
	var err error
	if s.Store.Types, err = parseTypes(q.Get("events")); err != nil {
		return nil, err
	}
	s.Store.Recipients = List(q.Get("recipients"))
	s.Store.MessageIDs = List(q.Get("message_ids"))
	s.Store.CampaignIDs = List(q.Get("campaign_ids"))
	for _, v := range List(q.Get("subaccounts")) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, paramErrorf("subaccounts must be a comma list of subaccount ids (0: master account), not %q", q.Get("subaccounts"))
		}
		s.Subaccounts = append(s.Subaccounts, n)
	}
	if v := q.Get("from"); v != "" {
		if s.Store.From, err = ParseTime(v); err != nil {
			return nil, paramErrorf("from: %v", err)
		}
	}
	if v := q.Get("to"); v != "" {
		if s.Store.To, err = ParseTime(v); err != nil {
			return nil, paramErrorf("to: %v", err)
		}
		if !s.Store.To.After(s.Store.From) {
			return nil, paramErrorf("to (%s) must be after from (%s)", v, s.Store.From.Format(time.RFC3339))
		}
	}
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPerPage {
			return nil, paramErrorf("per_page must be a number from 1 to %d, not %q", MaxPerPage, v)
		}
		s.Store.Limit = n
	}
	if v := q.Get("cursor"); v != "" && v != "initial" {
		c, err := store.ParseEventCursor(v)
		if err != nil {
			return nil, &ParamError{Msg: err.Error()}
		}
		s.Store.After = &c
	}
	return s, nil
}

// NextQuery returns the query string of the page after p: the same
// parameters with the cursor of p, "" when p is the last page. A search
// without from gets the from it was answered with, so that later pages
// keep the window of the first (the default is relative to now).
func NextQuery(q url.Values, p store.EventPage, from time.Time) string {
	if p.Next == nil {
		return ""
	}
	n := url.Values{}
	for k, v := range q {
		n[k] = slices.Clone(v)
	}
	if !n.Has("from") && !from.IsZero() {
		n.Set("from", from.UTC().Format(time.RFC3339Nano))
	}
	n.Set("cursor", p.Next.String())
	return n.Encode()
}

// List splits a comma-separated parameter, dropping empty entries and
// duplicates.
func List(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func parseTypes(v string) ([]string, error) {
	types := List(v)
	for _, t := range types {
		if !slices.Contains(Types, t) {
			return nil, paramErrorf("events: unknown event type %q; smtpgw records %s", t, strings.Join(Recorded, ", "))
		}
	}
	return types, nil
}

// timeLayouts are the forms accepted for from and to: RFC 3339 and
// SparkPost's YYYY-MM-DDTHH:MM (UTC).
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02"}

// ParseTime parses a from or to parameter.
func ParseTime(v string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.ParseInLocation(l, v, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-11-23T14:00:00Z) or YYYY-MM-DDTHH:MM in UTC", v)
}

// IsParamError reports whether err is a [ParamError].
func IsParamError(err error) bool {
	var pe *ParamError
	return errors.As(err, &pe)
}
