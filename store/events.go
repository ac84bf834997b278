package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// MessageInfo is what a message's events report about it beyond its
// envelope, taken at injection (stored as JSON in messages.info, so relay
// events carry it too).
type MessageInfo struct {
	// FriendlyFrom is the address of the From: header.
	FriendlyFrom string `json:"friendly_from,omitempty"`
	// Subject is the decoded Subject: header.
	Subject string `json:"subject,omitempty"`
	// IPAddress is the injecting client's address.
	IPAddress string `json:"ip_address,omitempty"`
	// RcptTypes maps recipients added from X-MSYS-API to "cc", "bcc" or
	// "archive"; every other recipient is "to".
	RcptTypes map[string]string `json:"rcpt_types,omitempty"`
	// Recipients is how many recipients the message was stored with (0 in
	// messages stored before it was recorded): the relay claims the rest
	// of a message cut by its claim limit only when there is a rest.
	Recipients int `json:"rcpt_count,omitempty"`
}

// RcptType is the SparkPost rcpt_type of addr: "to", "cc", "bcc" or
// "archive".
func (i *MessageInfo) RcptType(addr string) string {
	if t := i.RcptTypes[addr]; t != "" {
		return t
	}
	return "to"
}

// EventDetail holds an event's SparkPost fields that are not searched on,
// stored as JSON in events.detail. Zero values are left out.
type EventDetail struct {
	MsgFrom       string    `json:"msg_from,omitempty"`       // envelope sender
	FriendlyFrom  string    `json:"friendly_from,omitempty"`  // From: header address
	Subject       string    `json:"subject,omitempty"`        // Subject: header
	MsgSize       int64     `json:"msg_size,omitempty"`       // bytes
	IPAddress     string    `json:"ip_address,omitempty"`     // injecting client
	SendingIP     string    `json:"sending_ip,omitempty"`     // our address towards the receiver
	RemoteHost    string    `json:"remote_host,omitempty"`    // receiving MTA the attempt talked to
	RoutingDomain string    `json:"routing_domain,omitempty"` // recipient domain
	RcptType      string    `json:"rcpt_type,omitempty"`      // to, cc, bcc, archive
	NumRetries    int       `json:"num_retries,omitempty"`    // attempts before this one
	QueueTime     int64     `json:"queue_time,omitempty"`     // milliseconds since injection
	InjectionTime time.Time `json:"injection_time,omitzero"`
	BounceClass   int       `json:"bounce_class,omitempty"` // package bounce
	ErrorCode     string    `json:"error_code,omitempty"`   // SMTP reply code, e.g. "550"
}

// EventCursor is a position in a newest-first event listing: the next page
// holds the events strictly before (Time, ID).
type EventCursor struct {
	Time time.Time
	ID   int64
}

// String encodes the cursor for a URL: "<unix microseconds>.<id>".
func (c EventCursor) String() string {
	return fmt.Sprintf("%d.%d", c.Time.UnixMicro(), c.ID)
}

// ParseEventCursor decodes [EventCursor.String].
func ParseEventCursor(s string) (EventCursor, error) {
	a, b, ok := strings.Cut(s, ".")
	var us, id int64
	if ok {
		_, err1 := fmt.Sscan(a, &us)
		_, err2 := fmt.Sscan(b, &id)
		ok = err1 == nil && err2 == nil && id > 0
	}
	if !ok {
		return EventCursor{}, fmt.Errorf("cursor %q is not one this server gave: use links.next of the previous page", s)
	}
	return EventCursor{Time: time.UnixMicro(us).UTC(), ID: id}, nil
}

// EventSearch selects events for the events API; empty fields do not
// filter, lists match any of their values.
type EventSearch struct {
	Types       []string
	MessageIDs  []string
	Recipients  []string // matched as given and lowercased
	CampaignIDs []string
	Subaccounts []int64 // nil: every account
	KeyID       string
	From, To    time.Time // From inclusive, To exclusive; zero: open
	// After continues a listing: only events older than the cursor.
	After *EventCursor
	// Limit is the page size; 0: 1000.
	Limit int
	// Count asks for Total: the number of events matching without After
	// and Limit.
	Count bool
}

// EventPage is one page of a search, newest first.
type EventPage struct {
	Events []Event
	Total  int64        // with EventSearch.Count
	Next   *EventCursor // nil: no more events
}

// EventSearcher is the events API's side of the store.
type EventSearcher interface {
	// SearchEvents returns a page of events, newest first (time, then id),
	// with keyset paging: events inserted while a client pages do not shift
	// its pages.
	SearchEvents(ctx context.Context, s EventSearch) (EventPage, error)
}

// eventWhere builds the WHERE clause of s (with " WHERE ", or "") and its
// arguments; ph returns the placeholder of the n-th argument (1-based).
// withCursor adds the keyset condition.
func eventWhere(s EventSearch, ph func(n int) string, tm func(time.Time) any, withCursor bool) (string, []any) {
	var (
		where []string
		args  []any
	)
	add := func(v any) string {
		args = append(args, v)
		return ph(len(args))
	}
	in := func(col string, vs []string) {
		if len(vs) == 0 {
			return
		}
		ps := make([]string, len(vs))
		for i, v := range vs {
			ps[i] = add(v)
		}
		where = append(where, col+` IN (`+strings.Join(ps, ", ")+`)`)
	}
	in("type", s.Types)
	in("message_id", s.MessageIDs)
	in("campaign_id", s.CampaignIDs)
	if len(s.Recipients) > 0 {
		var rs []string
		for _, r := range s.Recipients {
			rs = appendNew(rs, r)
			rs = appendNew(rs, strings.ToLower(r))
		}
		in("recipient", rs)
	}
	if s.Subaccounts != nil {
		ps := make([]string, len(s.Subaccounts))
		for i, v := range s.Subaccounts {
			ps[i] = add(v)
		}
		if len(ps) == 0 {
			where = append(where, "1 = 0")
		} else {
			where = append(where, `subaccount IN (`+strings.Join(ps, ", ")+`)`)
		}
	}
	if s.KeyID != "" {
		where = append(where, `key_id = `+add(s.KeyID))
	}
	if !s.From.IsZero() {
		where = append(where, `time >= `+add(tm(s.From)))
	}
	if !s.To.IsZero() {
		where = append(where, `time < `+add(tm(s.To)))
	}
	if withCursor && s.After != nil {
		t := add(tm(s.After.Time))
		t2 := add(tm(s.After.Time))
		where = append(where, `(time < `+t+` OR (time = `+t2+` AND id < `+add(s.After.ID)+`))`)
	}
	if len(where) == 0 {
		return "", nil
	}
	return ` WHERE ` + strings.Join(where, " AND "), args
}

func appendNew(vs []string, v string) []string {
	for _, x := range vs {
		if x == v {
			return vs
		}
	}
	return append(vs, v)
}

// prepareDetails encodes the details of evs now, in the caller's
// goroutine, so that the store's writer, the one goroutine every session
// waits on, only reads the result (see [Event.encodedDetail]).
func prepareDetails(evs []Event) error {
	for i := range evs {
		d, err := encodeDetail(&evs[i].Detail)
		if err != nil {
			return err
		}
		evs[i].detail, evs[i].detailSet = d, true
	}
	return nil
}

// encodedDetail returns e's detail encoded for storage: what
// prepareDetails encoded, or else the encoding of it now.
func (e *Event) encodedDetail() (any, error) {
	if e.detailSet {
		return e.detail, nil
	}
	return encodeDetail(&e.Detail)
}

// encodeDetail returns the JSON of d, or nil when it is empty.
func encodeDetail(d *EventDetail) (any, error) {
	if *d == (EventDetail{}) {
		return nil, nil
	}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode event detail: %w", err)
	}
	return string(b), nil
}

// decodeDetail fills d from stored JSON (nil: nothing).
func decodeDetail(b []byte, d *EventDetail) error {
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, d); err != nil {
		return fmt.Errorf("decode event detail: %w", err)
	}
	return nil
}

// encodeInfo returns the JSON of a message's info, or nil when empty.
func encodeInfo(i *MessageInfo) (any, error) {
	if i.FriendlyFrom == "" && i.Subject == "" && i.IPAddress == "" && len(i.RcptTypes) == 0 && i.Recipients == 0 {
		return nil, nil
	}
	b, err := json.Marshal(i)
	if err != nil {
		return nil, fmt.Errorf("encode message info: %w", err)
	}
	return string(b), nil
}

// decodeInfo fills i from stored JSON (nil: nothing).
func decodeInfo(b []byte, i *MessageInfo) error {
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, i); err != nil {
		return fmt.Errorf("decode message info: %w", err)
	}
	return nil
}
