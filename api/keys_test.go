package api

import (
	"encoding/base64"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

var hexKey = regexp.MustCompile(`^[0-9a-f]{40}$`)

func TestKeysLifecycle(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})

			var created Key
			f.must(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: `{"label": " app ", "grants": ["smtp/inject", "templates/view"], "valid_ips": ["10.0.0.0/8", "127.0.0.1"]}`},
				http.StatusOK, &created)
			if !hexKey.MatchString(created.Key) || created.ShortKey != created.Key[:4] || created.ID == "" {
				t.Fatalf("created = %+v, want a 40-hex key with its short key and an id", created)
			}
			if created.Label != "app" || !slices.Equal(created.Grants, []string{"smtp/inject", "templates/view"}) ||
				!slices.Equal(created.ValidIPs, []string{"10.0.0.0/8", "127.0.0.1/32"}) || created.Subaccount != 0 {
				t.Errorf("created = %+v", created)
			}

			// Listed and shown without the key itself.
			var listed []Key
			raw := f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusOK, &listed)
			if len(listed) != 2 || listed[1].ID != created.ID || listed[1].Key != "" {
				t.Fatalf("list = %+v, want the admin key and the new one, without key", listed)
			}
			var shown Key
			raw2 := f.must(req{method: "GET", path: "/api/v1/api-keys/" + created.ID, key: f.admin}, http.StatusOK, &shown)
			for _, b := range [][]byte{raw, raw2} {
				if strings.Contains(string(b), created.Key) || strings.Contains(string(b), `"key":`) {
					t.Errorf("the key appears after create:\n%s", b)
				}
			}
			if shown.Label != "app" || shown.ShortKey != created.ShortKey {
				t.Errorf("shown = %+v", shown)
			}
			// ?grant= filters, as in SparkPost.
			f.must(req{method: "GET", path: "/api/v1/api-keys?grant=templates/view", key: f.admin}, http.StatusOK, &listed)
			if len(listed) != 1 || listed[0].ID != created.ID {
				t.Errorf("list ?grant=templates/view = %+v, want only the new key", listed)
			}

			// The new key works from 127.0.0.1 (allowed) for what it holds.
			var self struct {
				ID     string      `json:"id"`
				Grants []grantJSON `json:"grants"`
			}
			f.must(req{method: "GET", path: "/api/v1/authenticate", key: created.Key}, http.StatusOK, &self)
			grants := self.Grants
			if self.ID != created.ID || len(grants) != 2 || grants[0] != (grantJSON{Key: "smtp/inject", Enforced: true}) ||
				grants[1] != (grantJSON{Key: "templates/view", Enforced: false}) {
				t.Errorf("grants = %+v", grants)
			}

			// Update: label and grants replaced, allowed IPs kept.
			var updated Key
			f.must(req{method: "PUT", path: "/api/v1/api-keys/" + created.ID, key: f.admin,
				body: `{"label": "renamed", "grants": ["smtp/inject", "message_events/view"]}`}, http.StatusOK, &updated)
			if updated.Label != "renamed" || !slices.Equal(updated.Grants, []string{"smtp/inject", "message_events/view"}) ||
				len(updated.ValidIPs) != 2 || updated.Key != "" {
				t.Errorf("updated = %+v", updated)
			}
			// The change applies at once: the key now may read events.
			f.must(req{method: "GET", path: "/api/v1/events/message", key: created.Key}, http.StatusOK, nil)
			// Allowed IPs that exclude the client: the key is refused (401).
			f.must(req{method: "PUT", path: "/api/v1/api-keys/" + created.ID, key: f.admin,
				body: `{"valid_ips": ["192.0.2.0/24"]}`}, http.StatusOK, &updated)
			f.fails(req{method: "GET", path: "/api/v1/authenticate/grants", key: created.Key}, http.StatusUnauthorized)
			// [] allows any address again.
			f.must(req{method: "PUT", path: "/api/v1/api-keys/" + created.ID, key: f.admin,
				body: `{"valid_ips": []}`}, http.StatusOK, &updated)
			if len(updated.ValidIPs) != 0 || updated.Label != "renamed" {
				t.Errorf("after valid_ips [] = %+v", updated)
			}
			f.must(req{method: "GET", path: "/api/v1/authenticate/grants", key: created.Key}, http.StatusOK, nil)

			// Delete: 204, then the key (cached an hour by the Verifier) is
			// refused at once, and its id is gone.
			code, body := f.do(req{method: "DELETE", path: "/api/v1/api-keys/" + created.ID, key: f.admin})
			if code != http.StatusNoContent || len(body) != 0 {
				t.Fatalf("DELETE: %d %s, want 204 and no body", code, body)
			}
			f.fails(req{method: "GET", path: "/api/v1/authenticate/grants", key: created.Key}, http.StatusUnauthorized)
			f.fails(req{method: "GET", path: "/api/v1/api-keys/" + created.ID, key: f.admin}, http.StatusNotFound, created.ID)
			f.fails(req{method: "DELETE", path: "/api/v1/api-keys/" + created.ID, key: f.admin}, http.StatusNotFound, created.ID)
			f.fails(req{method: "PUT", path: "/api/v1/api-keys/" + created.ID, key: f.admin, body: `{"label": "x"}`},
				http.StatusNotFound, created.ID)
			f.must(req{method: "GET", path: "/api/v1/api-keys/", key: f.admin}, http.StatusOK, &listed)
			if len(listed) != 1 {
				t.Errorf("after delete, list = %+v, want only the admin key", listed)
			}
			if strings.Contains(f.logs.String(), created.Key) {
				t.Errorf("the created key appears in the log:\n%s", f.logs.String())
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	f := setupStore(t, storetest.Open(t, "sqlite"), auth.Config{CacheTTL: time.Hour, MaxFailures: -1}, Config{})
	inject := f.storeKey(0, "smtp/inject")

	// The three ways to send a key.
	for _, h := range []string{
		f.admin, // SparkPost's form
		"Bearer " + f.admin,
		"bearer  " + f.admin,
		"Basic " + base64.StdEncoding.EncodeToString([]byte(f.admin+":")),
	} {
		f.must(req{method: "GET", path: "/api/v1/api-keys", header: map[string]string{"Authorization": h}}, http.StatusOK, nil)
	}
	f.fails(req{method: "GET", path: "/api/v1/api-keys"}, http.StatusUnauthorized, "Authorization")
	f.fails(req{method: "GET", path: "/api/v1/api-keys", key: "not-a-key"}, http.StatusUnauthorized)
	f.fails(req{method: "GET", path: "/api/v1/api-keys", key: strings.Repeat("ab", 20)}, http.StatusUnauthorized)

	// A valid key without the grant: 403 naming the grant, on every API.
	for _, q := range []struct{ method, path, grant string }{
		{"GET", "/api/v1/api-keys", "api_keys/manage"},
		{"POST", "/api/v1/api-keys", "api_keys/manage"},
		{"GET", "/api/v1/api-keys/0123456789abcdef", "api_keys/manage"},
		{"PUT", "/api/v1/api-keys/0123456789abcdef", "api_keys/manage"},
		{"DELETE", "/api/v1/api-keys/0123456789abcdef", "api_keys/manage"},
		{"GET", "/api/v1/events/message", "message_events/view"},
		{"GET", "/api/v1/sending-domains", "sending_domains/manage"},
		{"POST", "/api/v1/sending-domains", "sending_domains/manage"},
		{"GET", "/api/v1/sending-domains/example.com", "sending_domains/manage"},
		{"DELETE", "/api/v1/sending-domains/example.com", "sending_domains/manage"},
	} {
		f.fails(req{method: q.method, path: q.path, key: inject, body: `{}`}, http.StatusForbidden, q.grant)
	}
	// Any valid key may read its own grants.
	var self struct {
		Grants []grantJSON `json:"grants"`
	}
	f.must(req{method: "GET", path: "/api/v1/authenticate", key: inject}, http.StatusOK, &self)
	if len(self.Grants) != 1 || self.Grants[0].Key != "smtp/inject" {
		t.Errorf("grants = %+v", self.Grants)
	}

	// Methods and paths the API does not serve.
	code, _ := f.do(req{method: "PATCH", path: "/api/v1/api-keys", key: f.admin})
	if code != http.StatusMethodNotAllowed {
		t.Errorf("PATCH /api/v1/api-keys: %d, want 405", code)
	}
	f.fails(req{method: "DELETE", path: "/api/v1/api-keys", key: f.admin}, http.StatusMethodNotAllowed, "GET, POST")
	f.fails(req{method: "GET", path: "/api/v1/transmissions", key: f.admin}, http.StatusNotFound, "/api/v1/transmissions")
	f.fails(req{method: "GET", path: "/api/v1/api-keys", key: f.admin, header: map[string]string{subaccountHeader: "x"}},
		http.StatusBadRequest, subaccountHeader)
	if strings.Contains(f.logs.String(), inject) {
		t.Errorf("a key appears in the log:\n%s", f.logs.String())
	}
}

func TestKeysBadInput(t *testing.T) {
	t.Parallel()
	f := setup(t, "sqlite", Config{})
	post := func(body string) req { return req{method: "POST", path: "/api/v1/api-keys", key: f.admin, body: body} }

	f.fails(post(`{"label": "a", "grants": ["smtp/inject", "bogus/grant"]}`), http.StatusUnprocessableEntity,
		`grants: unknown grant "bogus/grant": smtpgw enforces smtp/inject`)
	f.fails(post(`{"label": "a", "grants": []}`), http.StatusUnprocessableEntity, "grants: no grant given: give at least one")
	f.fails(post(`{"label": "a"}`), http.StatusUnprocessableEntity, "grants are required")
	f.fails(post(`{"grants": ["smtp/inject"]}`), http.StatusUnprocessableEntity, "label is required")
	f.fails(post(`{"label": "  ", "grants": ["smtp/inject"]}`), http.StatusUnprocessableEntity, "label: empty")
	f.fails(post(`{"label": "`+strings.Repeat("x", 1025)+`", "grants": ["smtp/inject"]}`),
		http.StatusUnprocessableEntity, "label: 1025 characters long: at most 1024")
	f.fails(post(`{"label": "a", "grants": ["smtp/inject"], "valid_ips": ["10.0.0.300"]}`),
		http.StatusUnprocessableEntity, `valid_ips: "10.0.0.300" is not an IP address or CIDR prefix`)
	f.fails(post(`{"label": "a", "grants": ["smtp/inject"], "subaccount_id": -1}`), http.StatusUnprocessableEntity,
		"subaccount_id: -1 is not a subaccount id")
	// metrics/view covers every account: refused for subaccount keys,
	// whether the subaccount comes from the body or the header.
	f.fails(post(`{"label": "a", "grants": ["metrics/view"], "subaccount_id": 3}`), http.StatusUnprocessableEntity,
		"grants: metrics/view is for master-account keys only")
	sub3 := post(`{"label": "a", "grants": ["smtp/inject", "metrics/view"]}`)
	sub3.header = map[string]string{subaccountHeader: "3"}
	f.fails(sub3, http.StatusUnprocessableEntity, "grants: metrics/view", "subaccount 3")
	f.fails(post(`{"label": "a", "grants": "smtp/inject"}`), http.StatusBadRequest, "grants", "an array")
	f.fails(post(`{"label": "a", `), http.StatusBadRequest, "not valid JSON")
	f.fails(post(`["smtp/inject"]`), http.StatusBadRequest, "JSON object")
	f.fails(post(`{"label": "a", "grants": ["smtp/inject"]} {}`), http.StatusBadRequest, "after the JSON object")
	f.fails(req{method: "POST", path: "/api/v1/api-keys", key: f.admin}, http.StatusBadRequest, "empty")
	big := `{"label": "` + strings.Repeat("x", maxBody) + `"}`
	f.fails(post(big), http.StatusRequestEntityTooLarge)

	var k Key
	f.must(post(`{"label": "a", "grants": ["smtp/inject"], "unknown_field": 1}`), http.StatusOK, &k) // ignored, as SparkPost
	put := func(body string) req {
		return req{method: "PUT", path: "/api/v1/api-keys/" + k.ID, key: f.admin, body: body}
	}
	f.fails(put(`{}`), http.StatusUnprocessableEntity, "nothing to change")
	f.fails(put(`{"grants": ["nope"]}`), http.StatusUnprocessableEntity, `grants: unknown grant "nope"`)
	f.fails(put(`{"label": ""}`), http.StatusUnprocessableEntity, "label: empty")
	f.fails(put(`{"valid_ips": ["10.0.0.0/33"]}`), http.StatusUnprocessableEntity, `valid_ips: "10.0.0.0/33" is not`)
	f.fails(put(`{"subaccount_id": 4}`), http.StatusUnprocessableEntity, "cannot move")
	f.fails(put(`{"label": 5}`), http.StatusBadRequest, "label", "a string")

	// Nothing was stored by the refused requests.
	var listed []Key
	f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusOK, &listed)
	if len(listed) != 2 || !slices.Equal(listed[1].Grants, []string{"smtp/inject"}) {
		t.Errorf("keys after refused requests = %+v", listed)
	}
	// Refused input is the client's fault: nothing logged as an internal
	// error.
	if strings.Contains(f.logs.String(), "internal error") {
		t.Errorf("refused input logged as an internal error:\n%s", f.logs.String())
	}
}

func TestFailedAuthThrottled(t *testing.T) {
	t.Parallel()
	f := setupStore(t, storetest.Open(t, "sqlite"), auth.Config{CacheTTL: time.Hour, MaxFailures: 3}, Config{})
	wrong := strings.Repeat("0", 40)
	for i := 0; i < 3; i++ {
		f.fails(req{method: "GET", path: "/api/v1/api-keys", key: wrong}, http.StatusUnauthorized)
	}
	// Blocked: even the right key is not looked at.
	f.fails(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusTooManyRequests, "try again later")

	// A missing grant is not a failed authentication.
	g := setupStore(t, storetest.Open(t, "sqlite"), auth.Config{CacheTTL: time.Hour, MaxFailures: 2}, Config{})
	inject := g.storeKey(0, "smtp/inject")
	for i := 0; i < 4; i++ {
		g.fails(req{method: "GET", path: "/api/v1/api-keys", key: inject}, http.StatusForbidden)
	}
	g.must(req{method: "GET", path: "/api/v1/api-keys", key: g.admin}, http.StatusOK, nil)
}
