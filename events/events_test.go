package events

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

func TestNewBounce(t *testing.T) {
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	ev := store.Event{ID: 9, Type: store.EventBounce, Time: at, MessageID: "m", Recipient: "r@example.net",
		Reply: "550 5.1.1 user unknown", Detail: store.EventDetail{BounceClass: 10, ErrorCode: "550", NumRetries: 2,
			QueueTime: 1234, MsgSize: 99, MsgFrom: "s@example.com", RcptType: "to", InjectionTime: at.Add(-time.Second)}}
	b, err := json.Marshal(New(ev))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": "bounce", "event_id": "9", "bounce_class": "10", "error_code": "550",
		"num_retries": "2", "queue_time": "1234", "msg_size": "99", "reason": "550 5.1.1 user unknown",
		"raw_reason": "550 5.1.1 user unknown", "rcpt_type": "to", "raw_rcpt_to": "r@example.net",
		"msg_from": "s@example.com", "injection_time": "2026-11-23T11:59:59Z", "delv_method": "esmtp"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// A delivery has no reason.
	ev.Type = store.EventDelivery
	if j := New(ev); j.Reason != "" {
		t.Errorf("delivery reason = %q", j.Reason)
	}
}

func TestParseSearch(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	q, _ := url.ParseQuery("events=bounce,delay&recipients=a@x,b@x,a@x&campaign_ids=c1&message_ids=m1&subaccounts=0,3" +
		"&from=2026-11-20T00:00&to=2026-11-22T00:00:00Z&per_page=50&cursor=1700000000000000.5")
	s, err := ParseSearch(q, now)
	if err != nil {
		t.Fatal(err)
	}
	st := s.Store
	if len(st.Types) != 2 || len(st.Recipients) != 2 || st.CampaignIDs[0] != "c1" || st.MessageIDs[0] != "m1" ||
		len(s.Subaccounts) != 2 || !st.From.Equal(time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)) ||
		!st.To.Equal(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)) || st.Limit != 50 || st.After == nil || st.After.ID != 5 || !st.Count {
		t.Errorf("parsed %+v", s)
	}
	d, err := ParseSearch(url.Values{}, now)
	if err != nil || !d.Store.From.Equal(now.Add(-DefaultFrom)) || d.Store.Limit != DefaultPerPage || d.Store.After != nil {
		t.Errorf("defaults: %+v, %v", d, err)
	}
	for query, want := range map[string]string{
		"events=nope":             "unknown event type",
		"per_page=10001":          "per_page",
		"per_page=x":              "per_page",
		"from=yesterday":          "from",
		"to=2020-01-01T00:00":     "after from",
		"cursor=12":               "links.next",
		"subaccounts=-1":          "subaccounts",
		"bounce_classes=10":       "not supported",
		"friendly_froms=a@b.test": "not supported",
	} {
		q, _ := url.ParseQuery(query)
		_, err := ParseSearch(q, now)
		if err == nil || !IsParamError(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSearch(%s) = %v, want an error with %q", query, err, want)
		}
	}
}

func TestNextQuery(t *testing.T) {
	q, _ := url.ParseQuery("recipients=a@x&per_page=2&cursor=old")
	if n := NextQuery(q, store.EventPage{}, time.Time{}); n != "" {
		t.Errorf("last page: next %q", n)
	}
	c := store.EventCursor{Time: time.UnixMicro(1700000000000000), ID: 7}
	from := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	n := NextQuery(q, store.EventPage{Next: &c}, from)
	v, _ := url.ParseQuery(n)
	if v.Get("cursor") != "1700000000000000.7" || v.Get("recipients") != "a@x" || v.Get("per_page") != "2" ||
		v.Get("from") != "2026-11-23T12:00:00Z" {
		t.Errorf("next = %q", n)
	}
	if q.Get("cursor") != "old" {
		t.Error("NextQuery changed its argument")
	}
}
