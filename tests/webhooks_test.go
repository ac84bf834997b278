package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookReceiver is a webhook endpoint: it refuses the first failBatches
// batches (503), then counts every event it accepts by event_id.
type hookReceiver struct {
	mu          sync.Mutex
	failBatches int
	failed      int
	events      map[string]int // event_id -> times accepted
	types       map[string]int // event type -> distinct events
	batchIDs    map[string]int
	problems    []string
}

func newHookReceiver(fail int) (*hookReceiver, *httptest.Server) {
	h := &hookReceiver{failBatches: fail, events: map[string]int{}, types: map[string]int{}, batchIDs: map[string]int{}}
	return h, httptest.NewServer(h)
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	if u, p, ok := r.BasicAuth(); !ok || u != "hooks" || p != "s3cret" {
		h.problems = append(h.problems, "missing basic auth")
	}
	var batch []struct {
		Msys struct {
			Event map[string]any `json:"message_event"`
		} `json:"msys"`
	}
	if err := json.Unmarshal(body, &batch); err != nil {
		h.problems = append(h.problems, "body is not SparkPost's batch: "+err.Error())
		return
	}
	if len(batch) == 1 && batch[0].Msys.Event == nil {
		return // the test POST of create and validate: [{"msys":{}}]
	}
	if h.failed < h.failBatches {
		h.failed++
		http.Error(w, "receiver down", http.StatusServiceUnavailable)
		return
	}
	id := r.Header.Get("X-MessageSystems-Batch-ID")
	if id == "" {
		h.problems = append(h.problems, "no X-MessageSystems-Batch-ID")
	}
	h.batchIDs[id]++
	for _, b := range batch {
		eid := fmt.Sprint(b.Msys.Event["event_id"])
		if h.events[eid] == 0 {
			h.types[fmt.Sprint(b.Msys.Event["type"])]++
		}
		h.events[eid]++
	}
}

func (h *hookReceiver) typeCount(t string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.types[t]
}

const webhooksTOML = `
[webhooks]
allow_private_targets = true
retry_initial = "300ms"
retry_max = "1s"
batch_interval = "200ms"
`

// TestSparkPostClientWebhooks: SparkPost's Node client creates, lists,
// reads, updates and validates a webhook; a receiver that fails its first
// batches then gets every injection and delivery event exactly once;
// batch-status shows the failed and the successful attempts; delete.
func TestSparkPostClientWebhooks(t *testing.T) {
	t.Parallel()
	needNodeClient(t)
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			rc, srv := newHookReceiver(4)
			defer srv.Close()
			sk := startSink(t)
			g := StartGateway(t, Options{Backend: backend, TOML: relayTOML(sk.addr) + webhooksTOML})
			logsOnFailure(t, g)
			key := g.CreateKey("--grant", "smtp/inject", "--grant", "webhooks/view", "--grant", "webhooks/modify")

			var setup struct {
				ID            string   `json:"id"`
				SigningSecret string   `json:"signing_secret"`
				Listed        []string `json:"listed"`
				Got           struct {
					Name     string   `json:"name"`
					Target   string   `json:"target"`
					Events   []string `json:"events"`
					AuthType string   `json:"auth_type"`
				} `json:"got"`
				UpdatedName    string `json:"updated_name"`
				ValidateMsg    string `json:"validate_msg"`
				ValidateStatus int    `json:"validate_status"`
			}
			g.MustSparkPost(key, "webhooks_setup", map[string]any{"target": srv.URL, "username": "hooks", "password": "s3cret"}, &setup)
			if setup.ID == "" || setup.SigningSecret == "" || !slices.Contains(setup.Listed, setup.ID) ||
				setup.Got.Target != srv.URL || len(setup.Got.Events) != 4 || setup.Got.AuthType != "basic" ||
				setup.UpdatedName != "renamed by the client" || setup.ValidateMsg != "Test POST to endpoint succeeded" ||
				setup.ValidateStatus != 200 {
				t.Fatalf("webhooks with the Node client: %+v", setup)
			}

			subjects := subjectList("hook-"+backend, 20)
			var acked injected
			if err := inject(g, key, subjects, 2, &acked); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(60 * time.Second)
			for (rc.typeCount("injection") < 20 || rc.typeCount("delivery") < 20) && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(time.Second) // a duplicate, if any, would arrive now
			rc.mu.Lock()
			if rc.types["injection"] != 20 || rc.types["delivery"] != 20 || rc.failed != 4 {
				t.Errorf("receiver got %v after %d refused batches, want 20 injections and 20 deliveries after 4", rc.types, rc.failed)
			}
			for id, n := range rc.events {
				if n != 1 {
					t.Errorf("event %s received %d times (no crash: want exactly once)", id, n)
				}
			}
			for id, n := range rc.batchIDs {
				if n != 1 {
					t.Errorf("batch %s accepted %d times", id, n)
				}
			}
			if len(rc.problems) > 0 {
				t.Errorf("receiver problems: %v", rc.problems)
			}
			rc.mu.Unlock()

			var status []struct {
				BatchID      string `json:"batch_id"`
				Attempts     int    `json:"attempts"`
				ResponseCode string `json:"response_code"`
			}
			g.MustSparkPost(key, "webhooks_status", map[string]any{"id": setup.ID}, &status)
			codes := map[string]int{}
			retried := false
			for _, s := range status {
				codes[s.ResponseCode]++
				if s.ResponseCode == "200" && s.Attempts > 1 {
					retried = true
				}
			}
			if codes["503"] != 4 || codes["200"] == 0 || !retried {
				t.Errorf("batch-status: %+v, want 4 attempts answered 503 and a batch delivered on a later attempt", status)
			}

			var del struct {
				GetAfterDelete int `json:"get_after_delete"`
			}
			g.MustSparkPost(key, "webhooks_delete", map[string]any{"id": setup.ID}, &del)
			if del.GetAfterDelete != 404 {
				t.Errorf("get after delete: %d, want 404", del.GetAfterDelete)
			}
			if out := g.MustCLI("webhooks", "list"); !strings.Contains(out, "No webhooks") {
				t.Errorf("webhooks list after delete:\n%s", out)
			}
		})
	}
}

// TestWebhooksSurviveCrash: the gateway is killed (SIGKILL) while batches
// are being POSTed to a slow receiver and restarted: every event still
// arrives; the only duplicates are events of batches that were in flight
// at the kill (sent again when their lease ended), and they are counted.
func TestWebhooksSurviveCrash(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			var (
				mu     sync.Mutex
				events = map[string]int{}
				// inFlight: events of POSTs held by the slow receiver when the
				// kill came; the dead gateway never saw their answer, so each
				// must come again. mayRepeat: events of every POST that
				// reached the receiver before the killed process was gone
				// (one arriving while it died may or may not be recorded as
				// delivered), so a duplicate of any other event is a bug.
				inFlight  = map[string]bool{}
				mayRepeat = map[string]bool{}
				killed    bool
				dead      bool
				started   = make(chan struct{}, 100)
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				var batch []struct {
					Msys struct {
						Event map[string]any `json:"message_event"`
					} `json:"msys"`
				}
				if json.Unmarshal(body, &batch) != nil || len(batch) == 0 || batch[0].Msys.Event == nil {
					return
				}
				mu.Lock()
				before := !killed
				for _, b := range batch {
					id := fmt.Sprint(b.Msys.Event["event_id"])
					if before {
						inFlight[id] = true
					}
					if !dead {
						mayRepeat[id] = true
					}
				}
				mu.Unlock()
				if before {
					started <- struct{}{}
					time.Sleep(1500 * time.Millisecond) // slow: the kill comes during this POST
				}
				mu.Lock()
				for _, b := range batch {
					events[fmt.Sprint(b.Msys.Event["event_id"])]++
				}
				mu.Unlock()
			}))
			defer srv.Close()
			g := StartGateway(t, Options{Backend: backend, TOML: `
[relay]
mode = "smarthost"
smarthost = "127.0.0.1:9"
smarthost_tls = "none"
retry_initial = "1h"
[webhooks]
allow_private_targets = true
retry_initial = "300ms"
retry_max = "1s"
batch_interval = "100ms"
batch_size = 5
timeout = "2s"
`})
			logsOnFailure(t, g)
			key := g.CreateKey("--grant", "smtp/inject", "--grant", "webhooks/modify")
			req, _ := http.NewRequest("POST", "http://"+g.HTTP+"/api/v1/webhooks",
				strings.NewReader(fmt.Sprintf(`{"name": "crash", "target": %q, "events": ["injection"]}`, srv.URL)))
			req.Header.Set("Authorization", key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("create webhook: HTTP %d", resp.StatusCode)
			}
			subjects := subjectList("crash-"+backend, 30)
			var acked injected
			if err := inject(g, key, subjects, 2, &acked); err != nil {
				t.Fatal(err)
			}
			select {
			case <-started:
			case <-time.After(30 * time.Second):
				t.Fatal("no batch POST started")
			}
			mu.Lock()
			killed = true
			mu.Unlock()
			g.Kill()
			mu.Lock()
			dead = true
			mu.Unlock()
			g.Restart()

			// The batches in flight at the kill were never recorded as
			// delivered: once their lease (3 × timeout + 10 s) ends, the
			// restarted gateway sends them again.
			deadline := time.Now().Add(90 * time.Second)
			for {
				mu.Lock()
				n, again := len(events), 0
				for id := range inFlight {
					if events[id] > 1 {
						again++
					}
				}
				done := n >= 30 && again == len(inFlight)
				mu.Unlock()
				if done || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			time.Sleep(time.Second)
			mu.Lock()
			defer mu.Unlock()
			if len(events) != 30 {
				t.Fatalf("%d of 30 injection events arrived after the crash", len(events))
			}
			dups := 0
			for id, n := range events {
				if n > 1 {
					dups += n - 1
					if !mayRepeat[id] {
						t.Errorf("event %s arrived %d times but was not in a batch sent before the kill", id, n)
					}
					if n > 2 {
						t.Errorf("event %s arrived %d times: one crash repeats a batch at most once", id, n)
					}
				}
			}
			for id := range inFlight {
				if events[id] < 2 {
					t.Errorf("event %s was in a POST cut by the kill but arrived %d time(s): it must be sent again", id, events[id])
				}
			}
			t.Logf("duplicates across the crash: %d (events in POSTs cut by the kill: %d, sent before the kill: %d)",
				dups, len(inFlight), len(mayRepeat))
		})
	}
}
