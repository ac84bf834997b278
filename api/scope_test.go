package api

import (
	"net/http"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

func TestSubaccountScoping(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})
			as7 := map[string]string{subaccountHeader: "7"}
			f.subaccount(7)
			f.subaccount(8)

			// The master key creates a key for subaccount 7 with the header.
			var sub Key
			f.must(req{method: "POST", path: "/api/v1/api-keys", key: f.admin, header: as7,
				body: `{"label": "tenant 7", "grants": ["api_keys/manage", "message_events/view", "sending_domains/manage", "smtp/inject"]}`},
				http.StatusOK, &sub)
			if sub.Subaccount != 7 {
				t.Fatalf("key created with X-MSYS-SUBACCOUNT: 7 has subaccount %d", sub.Subaccount)
			}
			// ... or with subaccount_id in the body.
			var sub8 Key
			f.must(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: `{"label": "tenant 8", "grants": ["smtp/inject"], "subaccount_id": 8}`}, http.StatusOK, &sub8)
			if sub8.Subaccount != 8 {
				t.Fatalf("key created with subaccount_id 8 has subaccount %d", sub8.Subaccount)
			}
			// But not both, differing.
			f.fails(req{method: "POST", path: "/api/v1/api-keys", key: f.admin, header: as7,
				body: `{"label": "x", "grants": ["smtp/inject"], "subaccount_id": 8}`}, http.StatusForbidden, "subaccount_id 8")

			// The subaccount key sees and makes only subaccount 7's keys.
			var keys []Key
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: sub.Key}, http.StatusOK, &keys)
			if len(keys) != 1 || keys[0].ID != sub.ID {
				t.Errorf("subaccount 7 lists %+v, want only its own key", keys)
			}
			var own Key
			f.must(req{method: "POST", path: "/api/v1/api-keys", key: sub.Key,
				body: `{"label": "app of 7", "grants": ["smtp/inject"]}`}, http.StatusOK, &own)
			if own.Subaccount != 7 {
				t.Errorf("a key made by subaccount 7's key has subaccount %d", own.Subaccount)
			}
			f.fails(req{method: "POST", path: "/api/v1/api-keys", key: sub.Key,
				body: `{"label": "escape", "grants": ["smtp/inject"], "subaccount_id": 0}`}, http.StatusForbidden)
			f.fails(req{method: "GET", path: "/api/v1/api-keys", key: sub.Key, header: map[string]string{subaccountHeader: "8"}},
				http.StatusForbidden, "subaccount 7")
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: sub.Key, header: as7}, http.StatusOK, nil)
			// Other accounts' keys do not exist for it.
			for _, id := range []string{sub8.ID, keyID(t, f, f.admin)} {
				f.fails(req{method: "GET", path: "/api/v1/api-keys/" + id, key: sub.Key}, http.StatusNotFound, id)
				f.fails(req{method: "PUT", path: "/api/v1/api-keys/" + id, key: sub.Key, body: `{"label": "x"}`}, http.StatusNotFound)
				f.fails(req{method: "DELETE", path: "/api/v1/api-keys/" + id, key: sub.Key}, http.StatusNotFound)
			}

			// The master key sees every key, or one subaccount's with the header.
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusOK, &keys)
			if len(keys) != 4 {
				t.Errorf("master lists %d keys, want 4", len(keys))
			}
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin, header: as7}, http.StatusOK, &keys)
			if len(keys) != 2 || keys[0].Subaccount != 7 || keys[1].Subaccount != 7 {
				t.Errorf("master with X-MSYS-SUBACCOUNT: 7 lists %+v", keys)
			}
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin, header: map[string]string{subaccountHeader: "0"}}, http.StatusOK, &keys)
			if len(keys) != 1 || keys[0].Subaccount != 0 {
				t.Errorf("master with X-MSYS-SUBACCOUNT: 0 lists %+v", keys)
			}
			f.fails(req{method: "GET", path: "/api/v1/api-keys/" + own.ID, key: f.admin, header: map[string]string{subaccountHeader: "8"}},
				http.StatusNotFound)

			// Sending domains.
			var d Domain
			f.must(req{method: "POST", path: "/api/v1/sending-domains", key: sub.Key, body: `{"domain": "tenant7.example", "dkim_algorithm": "ed25519"}`},
				http.StatusOK, &d)
			if d.Subaccount != 7 {
				t.Errorf("domain made by subaccount 7's key has subaccount %d", d.Subaccount)
			}
			f.fails(req{method: "POST", path: "/api/v1/sending-domains", key: sub.Key,
				body: `{"domain": "shared7.example", "dkim_algorithm": "ed25519", "shared_with_subaccounts": true}`},
				http.StatusUnprocessableEntity, "master-account")
			f.must(req{method: "POST", path: "/api/v1/sending-domains", key: f.admin, body: `{"domain": "master.example", "dkim_algorithm": "ed25519"}`},
				http.StatusOK, nil)
			var ds []Domain
			f.must(req{method: "GET", path: "/api/v1/sending-domains", key: sub.Key}, http.StatusOK, &ds)
			if len(ds) != 1 || ds[0].Domain != "tenant7.example" {
				t.Errorf("subaccount 7 lists domains %+v", ds)
			}
			f.fails(req{method: "GET", path: "/api/v1/sending-domains/master.example", key: sub.Key}, http.StatusNotFound)
			f.fails(req{method: "DELETE", path: "/api/v1/sending-domains/master.example", key: sub.Key}, http.StatusNotFound)
			f.must(req{method: "GET", path: "/api/v1/sending-domains", key: f.admin}, http.StatusOK, &ds)
			if len(ds) != 2 {
				t.Errorf("master lists domains %+v, want 2", ds)
			}
			f.must(req{method: "GET", path: "/api/v1/sending-domains/tenant7.example", key: f.admin, header: as7}, http.StatusOK, nil)

			// Events.
			enqueue(t, f.st, 0, "m@example.net")
			enqueue(t, f.st, 7, "s@example.net")
			var evs []Event
			f.must(req{method: "GET", path: "/api/v1/events/message", key: sub.Key}, http.StatusOK, &evs)
			if len(evs) != 1 || evs[0].Subaccount != 7 {
				t.Errorf("subaccount 7 sees events %+v", evs)
			}
			f.must(req{method: "GET", path: "/api/v1/events/message?subaccounts=7", key: sub.Key}, http.StatusOK, &evs)
			if len(evs) != 1 {
				t.Errorf("subaccount 7 with subaccounts=7 sees %d events, want 1", len(evs))
			}
			f.fails(req{method: "GET", path: "/api/v1/events/message?subaccounts=0", key: sub.Key}, http.StatusForbidden, "subaccount 0")
			f.fails(req{method: "GET", path: "/api/v1/events/message?subaccounts=7", key: f.admin, header: map[string]string{subaccountHeader: "0"}},
				http.StatusForbidden)
			f.must(req{method: "GET", path: "/api/v1/events/message", key: f.admin}, http.StatusOK, &evs)
			if len(evs) != 2 {
				t.Errorf("master sees %d events, want 2", len(evs))
			}
		})
	}
}

// keyID returns the id of key, looked up through the API.
func keyID(t *testing.T, f *fixture, key string) string {
	t.Helper()
	var keys []Key
	f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusOK, &keys)
	for _, k := range keys {
		if k.ShortKey == key[:4] && k.Label == "fixture" {
			return k.ID
		}
	}
	t.Fatalf("no key with short key %s", key[:4])
	return ""
}

func TestStoreUnavailable(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			// Verified from the cache, then the store goes away: the
			// operation answers 503.
			st := storetest.Open(t, backend)
			f := setupStore(t, st, auth.Config{CacheTTL: time.Hour}, Config{})
			f.must(req{method: "GET", path: "/api/v1/authenticate/grants", key: f.admin}, http.StatusOK, nil)
			// Without a cache, the key lookup itself fails: 503 too.
			g := setupStore(t, st, auth.Config{CacheTTL: -1}, Config{})
			if err := st.Close(); err != nil {
				t.Fatalf("close store: %v", err)
			}
			for _, p := range []string{"/api/v1/api-keys", "/api/v1/events/message", "/api/v1/sending-domains"} {
				f.fails(req{method: "GET", path: p, key: f.admin}, http.StatusServiceUnavailable, "try again later")
			}
			f.fails(req{method: "POST", path: "/api/v1/api-keys", key: f.admin, body: `{"label": "a", "grants": ["smtp/inject"]}`},
				http.StatusServiceUnavailable)
			g.fails(req{method: "GET", path: "/api/v1/authenticate/grants", key: g.admin}, http.StatusServiceUnavailable)
		})
	}
}
