package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// enqueue stores a message of subaccount sub to rcpts; the store records
// one injection event per recipient.
func enqueue(t *testing.T, st store.Store, sub int64, rcpts ...string) string {
	t.Helper()
	m := &store.Message{ID: store.NewID(), KeyID: "0123456789abcdef", Subaccount: sub, MailFrom: "app@example.com",
		Body: []byte("Subject: hi\r\n\r\nhello\r\n"), CampaignID: "spring",
		MsysAPI: []byte(`{"metadata": {"user": 7}, "tags": ["t1"]}`)}
	for _, r := range rcpts {
		m.Recipients = append(m.Recipients, &store.Recipient{Address: r, Domain: "example.net"})
	}
	if err := st.Enqueue(context.Background(), m); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	return m.ID
}

func TestEvents(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})
			ctx := context.Background()
			m1 := enqueue(t, f.st, 0, "a@example.net", "b@example.net")
			m2 := enqueue(t, f.st, 3, "c@example.net")
			m3 := enqueue(t, f.st, 4, "d@example.net")
			now := time.Now()
			if err := f.st.AddEvents(ctx, []store.Event{
				{Type: store.EventDelivery, Time: now.Add(time.Second), MessageID: m1, Subaccount: 0, Recipient: "a@example.net", Reply: "250 ok"},
				{Type: store.EventBounce, Time: now.Add(2 * time.Second), MessageID: m2, Subaccount: 3, Recipient: "c@example.net", Reply: "550 no"},
				{Type: store.EventDelivery, Time: now.Add(-48 * time.Hour), MessageID: m3, Subaccount: 4, Recipient: "d@example.net", Reply: "250 old"},
			}); err != nil {
				t.Fatalf("add events: %v", err)
			}
			get := func(query string) []Event {
				t.Helper()
				var evs []Event
				f.must(req{method: "GET", path: "/api/v1/events/message" + query, key: f.admin}, http.StatusOK, &evs)
				return evs
			}
			kinds := func(evs []Event) []string {
				var out []string
				for _, e := range evs {
					out = append(out, e.Type+":"+e.Recipient)
				}
				return out
			}

			// Default: the last 24 hours, newest first, every account.
			all := get("")
			if want := []string{"bounce:c@example.net", "delivery:a@example.net"}; len(all) != 6 || !slices.Equal(kinds(all[:2]), want) {
				t.Fatalf("events = %v, want 6 starting with %v", kinds(all), want)
			}
			inj := all[len(all)-1]
			if inj.Type != "injection" || inj.EventID == 0 || inj.CampaignID != "spring" || inj.KeyID != "0123456789abcdef" ||
				string(inj.Metadata) != `{"user":7}` || !slices.Equal(inj.Tags, []string{"t1"}) {
				t.Errorf("injection event = %+v", inj)
			}
			if evs := get("?events=bounce,delivery"); !slices.Equal(kinds(evs), []string{"bounce:c@example.net", "delivery:a@example.net"}) {
				t.Errorf("events=bounce,delivery: %v", kinds(evs))
			}
			if evs := get("?events=open,click"); len(evs) != 0 { // SparkPost's types: accepted, never recorded
				t.Errorf("events=open,click: %v", kinds(evs))
			}
			if evs := get("?message_ids=" + m1 + "," + m2 + "&events=injection"); len(evs) != 3 {
				t.Errorf("message_ids=m1,m2&events=injection: %v, want 3", kinds(evs))
			}
			if evs := get("?subaccounts=3"); !slices.Equal(kinds(evs), []string{"bounce:c@example.net", "injection:c@example.net"}) {
				t.Errorf("subaccounts=3: %v", kinds(evs))
			}
			if evs := get("?subaccounts=0,3&events=injection"); len(evs) != 3 {
				t.Errorf("subaccounts=0,3&events=injection: %v, want 3", kinds(evs))
			}
			if evs := get("?per_page=2"); !slices.Equal(kinds(evs), kinds(all[:2])) {
				t.Errorf("per_page=2: %v", kinds(evs))
			}
			if evs := get("?per_page=1&message_ids=" + m1 + "," + m2); !slices.Equal(kinds(evs), []string{"bounce:c@example.net"}) {
				t.Errorf("per_page=1 over two message ids: %v", kinds(evs))
			}
			from := url.QueryEscape(now.Add(-72 * time.Hour).UTC().Format(time.RFC3339))
			if evs := get("?from=" + from + "&subaccounts=4"); !slices.Equal(kinds(evs), []string{"injection:d@example.net", "delivery:d@example.net"}) {
				t.Errorf("from 72h ago, subaccount 4: %v", kinds(evs))
			}
			if evs := get("?recipients=c@example.net,a@example.net&events=injection"); !slices.Equal(kinds(evs), []string{"injection:c@example.net", "injection:a@example.net"}) &&
				!slices.Equal(kinds(evs), []string{"injection:a@example.net", "injection:c@example.net"}) {
				t.Errorf("recipients=c,a&events=injection: %v", kinds(evs))
			}
			if evs := get("?campaign_ids=spring,other&subaccounts=3"); len(evs) != 1 || evs[0].Type != "injection" {
				t.Errorf("campaign_ids=spring&subaccounts=3: %v (the bounce event has no campaign)", kinds(evs))
			}
			to := url.QueryEscape(now.Add(time.Second + time.Millisecond).UTC().Format(time.RFC3339Nano))
			if evs := get("?to=" + to + "&events=delivery,bounce"); !slices.Equal(kinds(evs), []string{"delivery:a@example.net"}) {
				t.Errorf("to=now+1s: %v", kinds(evs))
			}
			if evs := get("?from=" + now.Add(time.Hour).UTC().Format("2006-01-02T15:04")); len(evs) != 0 {
				t.Errorf("from an hour ahead (SparkPost's format): %v", kinds(evs))
			}
			// X-MSYS-SUBACCOUNT scopes the master key too.
			var scoped []Event
			f.must(req{method: "GET", path: "/api/v1/events/message", key: f.admin, header: map[string]string{subaccountHeader: "0"}},
				http.StatusOK, &scoped)
			if len(scoped) != 3 {
				t.Errorf("X-MSYS-SUBACCOUNT: 0: %v, want the 3 master-account events", kinds(scoped))
			}

			// Cursor paging: links.next until the last page, total_count
			// on every page, the same answer on SparkPost's old path.
			for _, path := range []string{"/api/v1/events/message", "/api/v1/message-events"} {
				var seen []string
				next := path + "?per_page=4"
				for pages := 0; next != ""; pages++ {
					if pages > 3 {
						t.Fatalf("%s: more pages than events", path)
					}
					var page struct {
						Results    []Event `json:"results"`
						TotalCount int64   `json:"total_count"`
						Links      struct {
							Next string `json:"next"`
						} `json:"links"`
					}
					if err := json.Unmarshal(f.must(req{method: "GET", path: next, key: f.admin}, http.StatusOK, nil), &page); err != nil {
						t.Fatal(err)
					}
					if page.TotalCount != 6 {
						t.Errorf("%s: total_count %d, want 6", next, page.TotalCount)
					}
					seen = append(seen, kinds(page.Results)...)
					next = page.Links.Next
				}
				if !slices.Equal(seen, kinds(all)) {
					t.Errorf("%s paged: %v, want %v", path, seen, kinds(all))
				}
			}

			path := "/api/v1/events/message"
			f.fails(req{method: "GET", path: path + "?events=inject", key: f.admin}, http.StatusBadRequest, `"inject"`, "injection")
			f.fails(req{method: "GET", path: path + "?to=2026-01-01T00:00", key: f.admin}, http.StatusBadRequest, "to", "must be after from")
			f.fails(req{method: "GET", path: path + "?page=2", key: f.admin}, http.StatusBadRequest, "page", "not supported", "cursor")
			f.fails(req{method: "GET", path: path + "?cursor=bogus", key: f.admin}, http.StatusBadRequest, "cursor", "links.next")
			f.fails(req{method: "GET", path: path + "?from=yesterday", key: f.admin}, http.StatusBadRequest, "yesterday")
			f.fails(req{method: "GET", path: path + "?per_page=0", key: f.admin}, http.StatusBadRequest, "per_page")
			f.fails(req{method: "GET", path: path + "?per_page=10001", key: f.admin}, http.StatusBadRequest, "per_page")
			f.fails(req{method: "GET", path: path + "?subaccounts=x", key: f.admin}, http.StatusBadRequest, "subaccounts")
		})
	}
}
