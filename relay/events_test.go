package relay

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestEventsCarryMsysAPI: the delay, delivery and bounce events of a
// message injected with X-MSYS-API metadata and tags carry the same
// campaign, metadata and tags as its injection events; a message without
// the header has neither.
func TestEventsCarryMsysAPI(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{rcpt: func(to string, n int) error {
				switch {
				case strings.HasPrefix(to, "bad@"):
					return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
				case strings.HasPrefix(to, "later@") && n == 0:
					return smtpErr(451, smtp.EnhancedCode{4, 3, 0}, "try later")
				}
				return nil
			}})
			startRelay(t, smarthostConfig(t, tg), st)
			msys := `{"campaign_id":"camp","metadata":{"user":"u1","plan":{"tier":2}},"tags":["welcome","t2"]}`
			m := enqueue(t, st, "", []string{"good@dest.test", "bad@dest.test", "later@dest.test"},
				testBody("s@src.test", "msys"), func(m *store.Message) { m.MsysAPI = json.RawMessage(msys) })
			plain := enqueue(t, st, "", []string{"good@dest.test"}, testBody("s@src.test", "plain"))
			waitFinal(t, st, m.ID)
			waitFinal(t, st, plain.ID)

			evs, err := st.ListEvents(context.Background(), store.EventFilter{MessageID: m.ID})
			if err != nil {
				t.Fatalf("list events: %v", err)
			}
			types := map[string]int{}
			for _, e := range evs {
				types[e.Type]++
				if e.CampaignID != "camp" || !jsonSame(t, e.Metadata, `{"user":"u1","plan":{"tier":2}}`) ||
					!reflect.DeepEqual(e.Tags, []string{"welcome", "t2"}) {
					t.Errorf("%s event for %s: campaign %q metadata %s tags %q", e.Type, e.Recipient, e.CampaignID, e.Metadata, e.Tags)
				}
			}
			for _, e := range evs {
				d := e.Detail
				if d.MsgFrom != m.MailFrom || d.MsgSize != int64(len(m.Body)) || d.RoutingDomain != "dest.test" || d.InjectionTime.IsZero() {
					t.Errorf("%s event for %s lacks message fields: %+v", e.Type, e.Recipient, d)
				}
				switch e.Type {
				case store.EventBounce:
					if d.BounceClass != 10 || d.ErrorCode != "550" || d.NumRetries != 0 || d.QueueTime < 0 {
						t.Errorf("bounce detail = %+v, want class 10, code 550, no retries", d)
					}
				case store.EventDelay:
					if d.BounceClass != 70 || d.ErrorCode != "451" {
						t.Errorf("delay detail = %+v, want class 70 (try later), code 451", d)
					}
				case store.EventDelivery:
					if d.SendingIP != "127.0.0.1" || d.RemoteHost == "" {
						t.Errorf("delivery detail: sending_ip %q, remote_host %q, want 127.0.0.1 and the target", d.SendingIP, d.RemoteHost)
					}
					if d.BounceClass != 0 || d.ErrorCode != "" {
						t.Errorf("delivery detail = %+v, want no class", d)
					}
					if e.Recipient == "later@dest.test" && d.NumRetries != 1 {
						t.Errorf("delivery after one delay: num_retries %d, want 1", d.NumRetries)
					}
				}
			}
			want := map[string]int{store.EventInjection: 3, store.EventDelivery: 2, store.EventBounce: 1, store.EventDelay: 1}
			if !reflect.DeepEqual(types, want) {
				t.Errorf("event types %v, want %v", types, want)
			}

			pevs, err := st.ListEvents(context.Background(), store.EventFilter{MessageID: plain.ID, Types: []string{store.EventDelivery}})
			if err != nil || len(pevs) != 1 {
				t.Fatalf("delivery events of the plain message: %d, %v", len(pevs), err)
			}
			if pevs[0].Metadata != nil || pevs[0].Tags != nil {
				t.Errorf("plain message's delivery event: metadata %s tags %q, want none", pevs[0].Metadata, pevs[0].Tags)
			}
		})
	}
}

// jsonSame reports whether a and b are the same JSON value.
func jsonSame(t *testing.T, a json.RawMessage, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatalf("bad JSON in test: %v", err)
	}
	return reflect.DeepEqual(x, y)
}
