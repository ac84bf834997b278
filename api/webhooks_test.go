package api

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/webhooks"
)

func TestWebhooksAPI(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var bodies []string
			status := http.StatusOK
			target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				b := make([]byte, 512)
				n, _ := r.Body.Read(b)
				bodies = append(bodies, string(b[:n])+" "+r.Header.Get(webhooks.BatchHeader))
				w.WriteHeader(status)
			}))
			defer target.Close()
			st := storetest.Open(t, backend)
			f := setupStore(t, st, auth.Config{}, Config{Webhooks: webhooks.NewManager(webhooks.Config{AllowPrivateTargets: true}, st)})

			// Create: SparkPost's test POST goes first, the answer has the id,
			// the links and (once) the signing secret.
			var created Webhook
			f.must(req{method: "POST", path: "/api/v1/webhooks", key: f.admin, body: fmt.Sprintf(
				`{"name": "bounces", "target": %q, "events": ["bounce", "delay"], "auth_type": "basic",
				  "auth_request_details": {"username": "u", "password": "secret-pw"}, "custom_headers": {"X-Customer": "7"}}`,
				target.URL)}, http.StatusOK, &created)
			if created.ID == "" || len(created.Links) != 3 || !strings.HasPrefix(created.SigningSecret, "whsec_") ||
				created.AuthRequestDetails["password"] != "********" || created.CustomHeaders["X-Customer"] != "7" {
				t.Fatalf("created = %+v", created)
			}
			mu.Lock()
			if len(bodies) != 1 || !strings.HasPrefix(bodies[0], `[{"msys":{}}]`) {
				t.Errorf("test POST at creation: %q", bodies)
			}
			mu.Unlock()
			path := "/api/v1/webhooks/" + created.ID

			var got Webhook
			f.must(req{method: "GET", path: path, key: f.admin}, http.StatusOK, &got)
			if got.Name != "bounces" || got.SigningSecret != "" || len(got.Events) != 2 || !got.Active {
				t.Errorf("get = %+v (the signing secret must not be shown again)", got)
			}
			var list []Webhook
			f.must(req{method: "GET", path: "/api/v1/webhooks", key: f.admin}, http.StatusOK, &list)
			if len(list) != 1 || list[0].ID != created.ID {
				t.Errorf("list = %+v", list)
			}
			f.must(req{method: "PUT", path: path, key: f.admin, body: `{"name": "renamed", "active": false}`}, http.StatusOK, &got)
			if got.Name != "renamed" || got.Active || got.AuthType != "basic" {
				t.Errorf("after PUT: %+v", got)
			}

			var v struct {
				Msg      string `json:"msg"`
				Response struct {
					Status int `json:"status"`
				} `json:"response"`
			}
			f.must(req{method: "POST", path: path + "/validate", key: f.admin, body: `{"message": {"msys": {}}}`}, http.StatusOK, &v)
			if v.Msg != "Test POST to endpoint succeeded" || v.Response.Status != 200 {
				t.Errorf("validate = %+v", v)
			}
			mu.Lock()
			status = http.StatusInternalServerError
			mu.Unlock()
			f.must(req{method: "POST", path: path + "/validate", key: f.admin}, http.StatusOK, &v)
			if v.Msg != "Test POST to endpoint failed" || v.Response.Status != 500 {
				t.Errorf("validate against a failing target = %+v", v)
			}
			// Creation against a failing target is refused.
			f.fails(req{method: "POST", path: "/api/v1/webhooks", key: f.admin, body: fmt.Sprintf(`{"name": "x", "target": %q}`, target.URL)},
				http.StatusBadRequest, "test POST", "HTTP 500")

			var bs []batchStatus
			f.must(req{method: "GET", path: path + "/batch-status", key: f.admin}, http.StatusOK, &bs)
			if bs == nil {
				t.Error("batch-status answered null, want a list")
			}

			// Grants and scope.
			viewer := f.storeKey(0, auth.GrantWebhooksView)
			f.must(req{method: "GET", path: path, key: viewer}, http.StatusOK, nil)
			f.fails(req{method: "DELETE", path: path, key: viewer}, http.StatusForbidden, "webhooks/modify")
			sub := f.storeKey(5, auth.GrantWebhooksView, auth.GrantWebhooksModify)
			f.fails(req{method: "GET", path: path, key: sub}, http.StatusNotFound, "no such webhook")
			f.must(req{method: "GET", path: "/api/v1/webhooks", key: sub}, http.StatusOK, &list)
			if len(list) != 0 {
				t.Errorf("subaccount 5 sees %d master webhooks", len(list))
			}
			// Bad input.
			f.fails(req{method: "POST", path: "/api/v1/webhooks", key: f.admin, body: `{"name": "x", "target": "ftp://x"}`},
				http.StatusBadRequest, "target")
			f.fails(req{method: "POST", path: "/api/v1/webhooks", key: f.admin, body: `{"name": "x", "target": "https://x.example", "events": ["nope"]}`},
				http.StatusBadRequest, "nope")

			f.must(req{method: "DELETE", path: path, key: f.admin}, http.StatusNoContent, nil)
			f.fails(req{method: "GET", path: path, key: f.admin}, http.StatusNotFound, "no such webhook")
		})
	}
}

// TestWebhookPrivateTargetRefused: with the default configuration a
// loopback target is refused at connect time, so creation fails.
func TestWebhookPrivateTargetRefused(t *testing.T) {
	t.Parallel()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("a request reached the loopback target")
	}))
	defer target.Close()
	f := setup(t, "sqlite", Config{})
	f.fails(req{method: "POST", path: "/api/v1/webhooks", key: f.admin, body: fmt.Sprintf(`{"name": "x", "target": %q}`, target.URL)},
		http.StatusBadRequest, "not allowed", "allow_private_targets")
}
