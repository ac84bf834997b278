package store

import (
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestSearchEventsFilters(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		evs := []Event{
			{Type: EventInjection, Time: t0, MessageID: "m1", Recipient: "a@x.example", CampaignID: "spring"},
			{Type: EventDelivery, Time: t0.Add(time.Minute), MessageID: "m1", Recipient: "a@x.example", CampaignID: "spring"},
			{Type: EventBounce, Time: t0.Add(2 * time.Minute), MessageID: "m2", Subaccount: 5, Recipient: "B@x.example", CampaignID: "fall",
				Reply: "550 5.1.1 user unknown", Detail: EventDetail{BounceClass: 10, ErrorCode: "550", NumRetries: 2, QueueTime: 1500,
					MsgFrom: "s@y.example", FriendlyFrom: "f@y.example", Subject: "Hi", MsgSize: 321, IPAddress: "192.0.2.1",
					RoutingDomain: "x.example", RcptType: "cc", InjectionTime: t0}},
			{Type: EventDelay, Time: t0.Add(3 * time.Minute), MessageID: "m3", Subaccount: 6, Recipient: "c@x.example"},
		}
		if err := e.s.AddEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		ids := func(p EventPage) []string {
			var out []string
			for _, ev := range p.Events {
				out = append(out, ev.Type)
			}
			return out
		}
		for _, c := range []struct {
			name string
			s    EventSearch
			want []string
		}{
			{"all", EventSearch{}, []string{EventDelay, EventBounce, EventDelivery, EventInjection}},
			{"types", EventSearch{Types: []string{EventDelivery, EventDelay}}, []string{EventDelay, EventDelivery}},
			{"recipient case", EventSearch{Recipients: []string{"b@x.example"}}, []string{}},
			{"recipient", EventSearch{Recipients: []string{"B@x.example", "a@x.example"}}, []string{EventBounce, EventDelivery, EventInjection}},
			{"message ids", EventSearch{MessageIDs: []string{"m2", "m3"}}, []string{EventDelay, EventBounce}},
			{"campaigns", EventSearch{CampaignIDs: []string{"spring"}}, []string{EventDelivery, EventInjection}},
			{"subaccounts", EventSearch{Subaccounts: []int64{0, 6}}, []string{EventDelay, EventDelivery, EventInjection}},
			{"no subaccounts", EventSearch{Subaccounts: []int64{}}, []string{}},
			{"from to", EventSearch{From: t0.Add(time.Minute), To: t0.Add(3 * time.Minute)}, []string{EventBounce, EventDelivery}},
			{"combined", EventSearch{Types: []string{EventInjection, EventDelivery}, CampaignIDs: []string{"spring"}, From: t0.Add(30 * time.Second)}, []string{EventDelivery}},
		} {
			p, err := e.s.SearchEvents(ctx, c.s)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if g := ids(p); !reflect.DeepEqual(append([]string{}, g...), c.want) {
				t.Errorf("%s: SearchEvents = %v, want %v", c.name, g, c.want)
			}
		}
		p, err := e.s.SearchEvents(ctx, EventSearch{Types: []string{EventBounce}})
		if err != nil || len(p.Events) != 1 {
			t.Fatal(p, err)
		}
		if got, want := p.Events[0].Detail, evs[2].Detail; got != want {
			t.Errorf("detail = %+v, want %+v", got, want)
		}
	})
}

func TestSearchEventsPaging(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
		var evs []Event
		for i := 0; i < 25; i++ {
			// Pairs share a time: the cursor must order by id within one.
			evs = append(evs, Event{Type: EventDelivery, Time: t0.Add(time.Duration(i/2) * time.Second),
				MessageID: fmt.Sprintf("m%d", i), Recipient: "r@x.example"})
		}
		if err := e.s.AddEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		// Other writers insert while the client pages: newer events and
		// events of another recipient must not shift the pages.
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := e.s.AddEvents(ctx, []Event{{Type: EventDelivery, MessageID: fmt.Sprintf("new%d", i), Recipient: "r@x.example"}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		q := EventSearch{Recipients: []string{"r@x.example"}, To: t0.Add(time.Minute), Limit: 10, Count: true}
		var seen []string
		pages := 0
		for {
			p, err := e.s.SearchEvents(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if p.Total != 25 {
				t.Errorf("page %d: total %d, want 25", pages, p.Total)
			}
			for _, ev := range p.Events {
				seen = append(seen, ev.MessageID)
			}
			if p.Next == nil {
				break
			}
			c, err := ParseEventCursor(p.Next.String())
			if err != nil || c != *p.Next {
				t.Fatalf("cursor %v round trip: %v, %v", p.Next, c, err)
			}
			q.After = &c
		}
		close(stop)
		wg.Wait()
		if pages != 3 || len(seen) != 25 {
			t.Fatalf("%d pages, %d events: %v", pages, len(seen), seen)
		}
		for i, id := range seen {
			if want := fmt.Sprintf("m%d", 24-i); id != want {
				t.Errorf("event %d = %s, want %s (newest first, no gap, no repeat)", i, id, want)
			}
		}
		for _, bad := range []string{"", "x", "1.", ".1", "1.0", "a.b"} {
			if _, err := ParseEventCursor(bad); err == nil {
				t.Errorf("ParseEventCursor(%q) succeeded", bad)
			}
		}
	})
}

func TestInjectionEventDetail(t *testing.T) {
	both(t, func(t *testing.T, e *env) {
		ctx := ctxT(t)
		m := newMsg(2)
		m.Info = MessageInfo{FriendlyFrom: "f@example.net", Subject: "Hello", IPAddress: "192.0.2.9",
			RcptTypes: map[string]string{"rcpt1@example.org": "bcc"}}
		mustEnqueue(t, e.s, m)
		p, err := e.s.SearchEvents(ctx, EventSearch{MessageIDs: []string{m.ID}})
		if err != nil || len(p.Events) != 2 {
			t.Fatal(p, err)
		}
		types := map[string]string{}
		for _, ev := range p.Events {
			d := ev.Detail
			if d.MsgFrom != "sender@example.net" || d.FriendlyFrom != "f@example.net" || d.Subject != "Hello" ||
				d.IPAddress != "192.0.2.9" || d.MsgSize != int64(len(m.Body)) || !d.InjectionTime.Equal(m.CreatedAt) ||
				d.RoutingDomain == "" {
				t.Errorf("injection detail = %+v", d)
			}
			types[ev.Recipient] = d.RcptType
		}
		if types["rcpt0@example.com"] != "to" || types["rcpt1@example.org"] != "bcc" {
			t.Errorf("rcpt types = %v", types)
		}
		cs, err := e.s.ClaimDue(ctx, "w", ClaimOptions{Limit: 10, Lease: time.Minute})
		if err != nil || len(cs) != 2 {
			t.Fatal(cs, err)
		}
		if c := cs[0]; c.Info.Subject != "Hello" || c.Info.IPAddress != "192.0.2.9" || c.Size != int64(len(m.Body)) {
			t.Errorf("claimed info = %+v, size %d", c.Info, c.Size)
		}
	})
}
