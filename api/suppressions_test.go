package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

func TestSuppressionListAPI(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})
			as5 := map[string]string{subaccountHeader: "5"}

			var msg map[string]string
			f.must(req{method: "PUT", path: "/api/v1/suppression-list", key: f.admin, body: `{"recipients": [
				{"recipient": "A@example.com", "type": "transactional", "description": "asked"},
				{"recipient": "a@example.com", "type": "non_transactional"},
				{"email": "b@example.com", "transactional": true, "non_transactional": true},
				{"recipient": "c@example.org", "type": "non_transactional"}]}`}, http.StatusOK, &msg)
			if msg["message"] != "Suppression List successfully updated" {
				t.Errorf("upsert answer %v", msg)
			}
			f.must(req{method: "PUT", path: "/api/v1/suppression-list/d@example.com", key: f.admin, header: as5,
				body: `{"type": "transactional"}`}, http.StatusOK, nil)

			var entries []Suppression
			f.must(req{method: "GET", path: "/api/v1/suppression-list/a@EXAMPLE.com", key: f.admin}, http.StatusOK, &entries)
			if len(entries) != 2 || entries[0].Type != "non_transactional" || !entries[0].NonTransactional ||
				entries[1].Description != "asked" || entries[1].Source != "Manually Added" {
				t.Errorf("GET a@: %+v", entries)
			}
			f.fails(req{method: "GET", path: "/api/v1/suppression-list/d@example.com", key: f.admin, header: map[string]string{subaccountHeader: "0"}},
				http.StatusNotFound, "not on the suppression list")
			f.must(req{method: "GET", path: "/api/v1/suppression-list/d@example.com", key: f.admin, header: as5}, http.StatusOK, &entries)
			if len(entries) != 1 || entries[0].Subaccount != 5 {
				t.Errorf("GET d@ as 5: %+v", entries)
			}

			// Search with paging: links first and next, total_count.
			var seen []string
			path := "/api/v1/suppression-list?per_page=2&cursor=initial&domain=example.com"
			for pages := 0; path != ""; pages++ {
				if pages > 4 {
					t.Fatal("paging does not end")
				}
				_, b := f.do(req{method: "GET", path: path, key: f.admin, header: map[string]string{subaccountHeader: "0"}})
				var p struct {
					Results    []Suppression
					Links      []map[string]string
					TotalCount int64 `json:"total_count"`
				}
				if err := json.Unmarshal(b, &p); err != nil || p.TotalCount != 4 || len(p.Links) == 0 || p.Links[0]["rel"] != "first" {
					t.Fatalf("page %d: %v\n%s", pages, err, b)
				}
				for _, e := range p.Results {
					seen = append(seen, e.Recipient+"/"+e.Type)
				}
				path = ""
				if len(p.Links) == 2 && p.Links[1]["rel"] == "next" {
					path = p.Links[1]["href"]
					if !strings.Contains(path, "domain=example.com") || !strings.Contains(path, "per_page=2") {
						t.Errorf("next link %q lost the filters", path)
					}
				}
			}
			if fmt.Sprint(seen) != "[a@example.com/non_transactional a@example.com/transactional b@example.com/non_transactional b@example.com/transactional]" {
				t.Errorf("pages gave %v", seen)
			}
			var all []Suppression
			f.must(req{method: "GET", path: "/api/v1/suppression-list?types=transactional", key: f.admin}, http.StatusOK, &all)
			if len(all) != 3 {
				t.Errorf("types=transactional over every account: %+v", all)
			}

			// Delete one type, then the rest; 404 after.
			f.must(req{method: "DELETE", path: "/api/v1/suppression-list/a@example.com", key: f.admin, body: `{"type": "transactional"}`}, http.StatusNoContent, nil)
			f.must(req{method: "GET", path: "/api/v1/suppression-list/a@example.com", key: f.admin}, http.StatusOK, &entries)
			if len(entries) != 1 || entries[0].Type != "non_transactional" {
				t.Errorf("after deleting one type: %+v", entries)
			}
			f.must(req{method: "DELETE", path: "/api/v1/suppression-list/a@example.com", key: f.admin}, http.StatusNoContent, nil)
			f.fails(req{method: "DELETE", path: "/api/v1/suppression-list/a@example.com", key: f.admin}, http.StatusNotFound, "a@example.com")
			// A subaccount key sees only its own list.
			sub := f.storeKey(5, auth.GrantSuppressionsManage)
			f.must(req{method: "GET", path: "/api/v1/suppression-list", key: sub}, http.StatusOK, &all)
			if len(all) != 1 || all[0].Recipient != "d@example.com" {
				t.Errorf("subaccount 5 lists %+v", all)
			}
			f.fails(req{method: "DELETE", path: "/api/v1/suppression-list/b@example.com", key: sub}, http.StatusNotFound)

			for _, tc := range []struct {
				q    req
				want string
			}{
				{req{method: "PUT", path: "/api/v1/suppression-list", body: `{"recipients": []}`}, "recipients: empty"},
				{req{method: "PUT", path: "/api/v1/suppression-list", body: `{"recipients": [{"recipient": "x", "type": "transactional"}]}`}, "recipient:"},
				{req{method: "PUT", path: "/api/v1/suppression-list", body: `{"recipients": [{"recipient": "x@y.z", "type": "both"}]}`}, "type:"},
				{req{method: "PUT", path: "/api/v1/suppression-list", body: `{"recipients": [{"recipient": "x@y.z", "type": "transactional"}, {"recipient": "x@y.z"}]}`}, "recipients[1].type"},
				{req{method: "GET", path: "/api/v1/suppression-list?per_page=0"}, "per_page"},
				{req{method: "GET", path: "/api/v1/suppression-list?per_page=10001"}, "per_page"},
				{req{method: "GET", path: "/api/v1/suppression-list?cursor=%21"}, "cursor"},
				{req{method: "GET", path: "/api/v1/suppression-list?from=yesterday"}, "from"},
				{req{method: "GET", path: "/api/v1/suppression-list?types=x"}, "types"},
			} {
				tc.q.key = f.admin
				f.fails(tc.q, http.StatusBadRequest, tc.want)
			}
			f.fails(req{method: "GET", path: "/api/v1/suppression-list", key: f.storeKey(0, auth.GrantSMTPInject)}, http.StatusForbidden, "suppression_lists/manage")
		})
	}
}
