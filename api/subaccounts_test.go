package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

func TestSubaccountsAPI(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})

			// Create with setup_api_key (the default): SparkPost's answer.
			b := f.must(req{method: "POST", path: "/api/v1/subaccounts", key: f.admin,
				body: `{"name": "Acme", "key_label": "Acme SMTP", "key_grants": ["smtp/inject", "suppression_lists/manage"], "key_valid_ips": ["10.0.0.0/8"]}`},
				http.StatusOK, nil)
			var created struct {
				Results map[string]any `json:"results"`
			}
			if err := json.Unmarshal(b, &created); err != nil {
				t.Fatal(err)
			}
			res := created.Results
			key, _ := res["key"].(string)
			id := int64(res["subaccount_id"].(float64))
			if len(res) != 4 || id <= 0 || !auth.WellFormed(key) || res["label"] != "Acme SMTP" || res["short_key"] != key[:4] {
				t.Fatalf("create answer %s", b)
			}
			// The key belongs to the subaccount, and is never shown again.
			var keys []Key
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin, header: map[string]string{subaccountHeader: strconv.FormatInt(id, 10)}}, http.StatusOK, &keys)
			if len(keys) != 1 || keys[0].Key != "" || keys[0].ValidIPs[0] != "10.0.0.0/8" {
				t.Errorf("subaccount's keys: %+v", keys)
			}
			// Without a key.
			var bare SubaccountCreated
			f.must(req{method: "POST", path: "/api/v1/subaccounts", key: f.admin, body: `{"name": "Bare", "setup_api_key": false}`}, http.StatusOK, &bare)
			if bare.ID != id+1 || bare.Key != "" {
				t.Errorf("create without key: %+v", bare)
			}

			var list []Subaccount
			f.must(req{method: "GET", path: "/api/v1/subaccounts", key: f.admin}, http.StatusOK, &list)
			if len(list) != 2 || list[0].ID != id || list[0].Name != "Acme" || list[0].Status != "active" || list[0].ComplianceStatus != "active" {
				t.Errorf("list %+v", list)
			}
			path := "/api/v1/subaccounts/" + strconv.FormatInt(id, 10)
			f.must(req{method: "PUT", path: path, key: f.admin, body: `{"name": "Acme Inc", "status": "suspended"}`}, http.StatusOK, nil)
			var one Subaccount
			f.must(req{method: "GET", path: path, key: f.admin}, http.StatusOK, &one)
			if one.Name != "Acme Inc" || one.Status != "suspended" {
				t.Errorf("after update: %+v", one)
			}
			// The suspended subaccount's key is refused (the API evicts at once).
			f.fails(req{method: "GET", path: "/api/v1/authenticate/grants", key: key}, http.StatusUnauthorized)
			f.must(req{method: "PUT", path: path, key: f.admin, body: `{"status": "terminated"}`}, http.StatusOK, nil)
			f.fails(req{method: "PUT", path: path, key: f.admin, body: `{"status": "active"}`}, http.StatusUnprocessableEntity, "status:", "final")

			// Keys for missing subaccounts are refused.
			f.fails(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: `{"label": "x", "grants": ["smtp/inject"], "subaccount_id": 999}`}, http.StatusUnprocessableEntity, "subaccount_id", "no subaccount 999")

			for _, tc := range []struct {
				body string
				want string
			}{
				{`{"key_label": "k", "key_grants": ["smtp/inject"]}`, "name is required"},
				{`{"name": "x", "key_grants": ["smtp/inject"]}`, "key_label is required"},
				{`{"name": "x", "key_label": "k"}`, "key_grants are required"},
				{`{"name": "x", "key_label": "k", "key_grants": ["nope"]}`, "key_grants: unknown grant"},
				{`{"name": "x", "key_label": "k", "key_grants": ["metrics/view"]}`, "key_grants: metrics/view"},
				{`{"name": "x", "key_label": "k", "key_grants": ["smtp/inject"], "key_valid_ips": ["300.0.0.1"]}`, "key_valid_ips:"},
				{`{"name": "", "setup_api_key": false}`, "name: empty"},
				{`{"name": "x", "setup_api_key": false, "status": "suspended"}`, "status:"},
			} {
				f.fails(req{method: "POST", path: "/api/v1/subaccounts", key: f.admin, body: tc.body}, http.StatusUnprocessableEntity, tc.want)
			}
			f.fails(req{method: "PUT", path: path, key: f.admin, body: `{"status": "paused"}`}, http.StatusUnprocessableEntity, "status:")
			f.fails(req{method: "GET", path: "/api/v1/subaccounts/999", key: f.admin}, http.StatusNotFound, "999")
			f.fails(req{method: "GET", path: "/api/v1/subaccounts/abc", key: f.admin}, http.StatusNotFound)
			f.fails(req{method: "PUT", path: "/api/v1/subaccounts/999", key: f.admin, body: `{"name": "x"}`}, http.StatusNotFound)

			// Master keys only, unscoped; the grant is needed.
			sub := f.storeKey(bare.ID, auth.GrantSubaccountsManage)
			f.fails(req{method: "GET", path: "/api/v1/subaccounts", key: sub}, http.StatusForbidden, "master-account key")
			f.fails(req{method: "GET", path: "/api/v1/subaccounts", key: f.admin, header: map[string]string{subaccountHeader: "0"}},
				http.StatusForbidden, subaccountHeader)
			plain := f.storeKey(0, auth.GrantSMTPInject)
			f.fails(req{method: "GET", path: "/api/v1/subaccounts", key: plain}, http.StatusForbidden, "subaccounts/manage")
		})
	}
}
