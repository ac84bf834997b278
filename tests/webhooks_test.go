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
