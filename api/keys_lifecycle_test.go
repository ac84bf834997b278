package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestListKeysPaged pages GET /api/v1/api-keys with per_page and
// links.next, with filters, within the request's scope.
func TestListKeysPaged(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})
			f.subaccount(1)
			for i := range 7 {
				f.must(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
					body: fmt.Sprintf(`{"label": "Shop %d", "grants": ["smtp/inject"], "subaccount_id": %d}`, i, i%2)}, http.StatusOK, nil)
			}
			type page struct {
				Results []Key `json:"results"`
				Links   struct {
					Next string `json:"next"`
				} `json:"links"`
			}
			walk := func(path, key string, h map[string]string) []string {
				var ids []string
				for range 20 {
					var p page
					b := f.must(req{method: "GET", path: path, key: key, header: h}, http.StatusOK, nil)
					if err := json.Unmarshal(b, &p); err != nil {
						t.Fatal(err)
					}
					q, _ := url.ParseQuery(path[strings.Index(path, "?")+1:])
					if n, err := strconv.Atoi(q.Get("per_page")); err == nil && len(p.Results) > n {
						t.Fatalf("page of %d keys for per_page=%d", len(p.Results), n)
					}
					for _, k := range p.Results {
						ids = append(ids, k.ID)
					}
					if p.Links.Next == "" {
						return ids
					}
					if !strings.HasPrefix(p.Links.Next, "/api/v1/api-keys?") {
						t.Fatalf("links.next = %q", p.Links.Next)
					}
					path = p.Links.Next
				}
				t.Fatal("links.next never ends")
				return nil
			}
			all := walk("/api/v1/api-keys?per_page=2", f.admin, nil)
			if len(all) != 8 { // 7 and the admin key
				t.Errorf("paged listing has %d keys, want 8", len(all))
			}
			var whole []Key
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusOK, &whole)
			for i, k := range whole {
				if i >= len(all) || all[i] != k.ID {
					t.Fatalf("paged listing %v differs from the one-page one", all)
				}
			}
			if got := walk("/api/v1/api-keys?per_page=1&label=shop&subaccount=1", f.admin, nil); len(got) != 3 {
				t.Errorf("label=shop&subaccount=1: %d keys, want 3", len(got))
			}
			// A subaccount-scoped request sees its subaccount's keys only.
			if got := walk("/api/v1/api-keys?per_page=2", f.admin, map[string]string{subaccountHeader: "1"}); len(got) != 3 {
				t.Errorf("X-MSYS-SUBACCOUNT: 1: %d keys, want 3", len(got))
			}
			f.fails(req{method: "GET", path: "/api/v1/api-keys?subaccount=2", key: f.admin, header: map[string]string{subaccountHeader: "1"}},
				http.StatusForbidden, "outside")
			f.fails(req{method: "GET", path: "/api/v1/api-keys?per_page=0", key: f.admin}, http.StatusBadRequest, "per_page")
			f.fails(req{method: "GET", path: "/api/v1/api-keys?per_page=10001", key: f.admin}, http.StatusBadRequest, "per_page")
			f.fails(req{method: "GET", path: "/api/v1/api-keys?cursor=nonsense!", key: f.admin}, http.StatusBadRequest, "cursor")
		})
	}
}

// TestKeyExpiryRotationLimits: expires_at and limits through the API, the
// rotate endpoint, and a key refused once expired.
func TestKeyExpiryRotationLimits(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})
			exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
			var k Key
			f.must(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: fmt.Sprintf(`{"label": "app", "grants": ["smtp/inject", "api_keys/manage"], "expires_at": %q, "limits": {"per_hour": 1000, "per_day": 50000}}`,
					exp.Format(time.RFC3339))}, http.StatusOK, &k)
			if k.ExpiresAt != exp.Format(time.RFC3339) || k.Expired || k.Limits == nil || *k.Limits != (Limits{PerHour: 1000, PerDay: 50000}) {
				t.Fatalf("created %+v: want the expiry and limits given", k)
			}
			var shown Key
			f.must(req{method: "GET", path: "/api/v1/api-keys/" + k.ID, key: f.admin}, http.StatusOK, &shown)
			if u, ok := shown.Usage["per_hour"]; !ok || u.Limit != 1000 || u.Used != 0 || u.Remaining != 1000 || u.ResetsAt == "" {
				t.Errorf("usage = %+v, want per_hour 0 of 1000", shown.Usage)
			}
			var listed []Key
			f.must(req{method: "GET", path: "/api/v1/api-keys", key: f.admin}, http.StatusOK, &listed)
			if i := slices.IndexFunc(listed, func(j Key) bool { return j.ID == k.ID }); i < 0 || listed[i].Limits == nil || listed[i].Limits.PerDay != 50000 {
				t.Errorf("list does not show the key's limits: %+v", listed)
			}

			// Refused values.
			f.fails(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: `{"label": "x", "grants": ["smtp/inject"], "expires_at": "tomorrow"}`}, http.StatusUnprocessableEntity, "expires_at", "RFC 3339")
			f.fails(req{method: "POST", path: "/api/v1/api-keys", key: f.admin,
				body: `{"label": "x", "grants": ["smtp/inject"], "expires_at": "2001-01-01T00:00:00Z"}`}, http.StatusUnprocessableEntity, "expires_at", "not in the future")
			f.fails(req{method: "PUT", path: "/api/v1/api-keys/" + k.ID, key: f.admin,
				body: `{"limits": {"per_hour": -1}}`}, http.StatusUnprocessableEntity, "limits", "per_hour")

			// Update: limits replaced, expiry removed.
			var up Key
			f.must(req{method: "PUT", path: "/api/v1/api-keys/" + k.ID, key: f.admin,
				body: `{"limits": {"per_minute": 10}, "expires_at": ""}`}, http.StatusOK, &up)
			if up.ExpiresAt != "" || up.Limits == nil || *up.Limits != (Limits{PerMinute: 10}) {
				t.Errorf("after update: %+v", up)
			}

			// Rotate: a twin key, shown once, and the old key expiring after the overlap.
			var rot struct {
				Key
				Replaces struct {
					ID        string `json:"id"`
					ExpiresAt string `json:"expires_at"`
				} `json:"replaces"`
			}
			before := time.Now()
			f.must(req{method: "POST", path: "/api/v1/api-keys/" + k.ID + "/rotate", key: f.admin, body: `{"overlap": "2h"}`}, http.StatusOK, &rot)
			if !hexKey.MatchString(rot.Key.Key) || rot.ID == k.ID || rot.Label != "app" ||
				!slices.Equal(rot.Grants, k.Grants) || rot.Limits == nil || rot.Limits.PerMinute != 10 || rot.ExpiresAt != "" {
				t.Errorf("rotated key %+v: want a new key with the same label, grants and limits, no expiry", rot.Key)
			}
			oldExp, err := time.Parse(time.RFC3339, rot.Replaces.ExpiresAt)
			if err != nil || rot.Replaces.ID != k.ID || oldExp.Before(before.Add(2*time.Hour-time.Second)) || oldExp.After(time.Now().Add(2*time.Hour)) {
				t.Errorf("replaces = %+v, want %s expiring in 2h", rot.Replaces, k.ID)
			}
			// Both keys work during the overlap.
			for _, key := range []string{rot.Key.Key} {
				f.must(req{method: "GET", path: "/api/v1/authenticate", key: key}, http.StatusOK, nil)
			}
			f.fails(req{method: "POST", path: "/api/v1/api-keys/" + k.ID + "/rotate", key: f.admin, body: `{"overlap": "-1h"}`},
				http.StatusUnprocessableEntity, "overlap")
			f.fails(req{method: "POST", path: "/api/v1/api-keys/0123456789abcdef/rotate", key: f.admin}, http.StatusNotFound)
			// No body: the default overlap of 24 hours.
			var rot2 struct {
				Replaces struct {
					ExpiresAt string `json:"expires_at"`
				} `json:"replaces"`
			}
			f.must(req{method: "POST", path: "/api/v1/api-keys/" + rot.ID + "/rotate", key: f.admin}, http.StatusOK, &rot2)
			if e, _ := time.Parse(time.RFC3339, rot2.Replaces.ExpiresAt); e.Before(time.Now().Add(24*time.Hour - time.Minute)) {
				t.Errorf("default overlap: old key expires %s, want in 24h", rot2.Replaces.ExpiresAt)
			}

			// An expired key is refused as a deleted one (401), logged as expired.
			key, sk, err := auth.NewManager(f.st, nil).Create(context.Background(),
				auth.CreateParams{Label: "short-lived", Grants: []string{auth.GrantAPIKeysManage}})
			if err != nil {
				t.Fatal(err)
			}
			sk.ExpiresAt = time.Now().Add(-time.Second)
			if err := f.st.UpdateKey(context.Background(), sk); err != nil {
				t.Fatal(err)
			}
			f.fails(req{method: "GET", path: "/api/v1/api-keys", key: key}, http.StatusUnauthorized, "expired")
			if !strings.Contains(f.logs.String(), "expired key (key "+sk.ID) {
				t.Errorf("the log does not give the reason expired:\n%s", f.logs.String())
			}
			var ek Key
			f.must(req{method: "GET", path: "/api/v1/api-keys/" + sk.ID, key: f.admin}, http.StatusOK, &ek)
			if !ek.Expired {
				t.Errorf("expired key shown as %+v, want expired: true", ek)
			}
		})
	}
}

// TestGrantsToAssign: /api/v1/authenticate/grants lists the grants a key
// may be given, for the account or a subaccount.
func TestGrantsToAssign(t *testing.T) {
	t.Parallel()
	f := setup(t, "sqlite", Config{})
	var all, sub []grantJSON
	f.must(req{method: "GET", path: "/api/v1/authenticate/grants", key: f.admin}, http.StatusOK, &all)
	f.must(req{method: "GET", path: "/api/v1/authenticate/grants?role=subaccount", key: f.admin}, http.StatusOK, &sub)
	keys := func(gs []grantJSON) []string {
		var out []string
		for _, g := range gs {
			out = append(out, g.Key)
			if g.Enforced != auth.IsEnforced(g.Key) {
				t.Errorf("grant %s: enforced %v", g.Key, g.Enforced)
			}
		}
		return out
	}
	if !slices.Equal(keys(all), auth.AcceptedGrants) {
		t.Errorf("grants = %v, want every accepted grant", keys(all))
	}
	if s := keys(sub); slices.Contains(s, auth.GrantMetricsView) || !slices.Contains(s, auth.GrantSMTPInject) || len(s) != len(all)-1 {
		t.Errorf("role=subaccount grants = %v, want all but metrics/view", s)
	}
	// A subaccount's own key gets the subaccount's list.
	subKey := f.storeKey(4, auth.GrantSMTPInject)
	var own []grantJSON
	f.must(req{method: "GET", path: "/api/v1/authenticate/grants", key: subKey}, http.StatusOK, &own)
	if slices.Contains(keys(own), auth.GrantMetricsView) {
		t.Errorf("a subaccount key is offered metrics/view")
	}
	f.fails(req{method: "GET", path: "/api/v1/authenticate/grants?role=admin", key: f.admin}, http.StatusBadRequest, "role")
}

// TestSubaccountLimitsAPI sets and reads a subaccount's limits.
func TestSubaccountLimitsAPI(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			f := setup(t, backend, Config{})
			type subLimits struct {
				Subaccount int64            `json:"subaccount_id"`
				Limits     Limits           `json:"limits"`
				Usage      map[string]Usage `json:"usage"`
			}
			for _, id := range []int64{8, 9} {
				if err := f.st.CreateSubaccount(context.Background(), &store.Subaccount{ID: id, Name: fmt.Sprint("sub ", id), Status: store.SubaccountActive}); err != nil {
					t.Fatal(err)
				}
			}
			f.fails(req{method: "GET", path: "/api/v1/subaccounts/10/limits", key: f.admin}, http.StatusNotFound, "no subaccount 10")
			var got subLimits
			f.must(req{method: "PUT", path: "/api/v1/subaccounts/9/limits", key: f.admin,
				body: `{"limits": {"per_day": 500, "per_month": 10000}}`}, http.StatusOK, &got)
			if got.Subaccount != 9 || got.Limits != (Limits{PerDay: 500, PerMonth: 10000}) || got.Usage["per_day"].Remaining != 500 {
				t.Errorf("PUT answer %+v", got)
			}
			if l, err := f.st.GetLimits(context.Background(), store.LimitScope{Kind: store.LimitKindSubaccount, ID: "9"}); err != nil || l.PerDay != 500 {
				t.Errorf("stored limits %+v, %v", l, err)
			}
			f.must(req{method: "GET", path: "/api/v1/subaccounts/9/limits", key: f.admin}, http.StatusOK, &got)
			if got.Limits.PerMonth != 10000 {
				t.Errorf("GET answer %+v", got)
			}
			// The subaccount's own key reads them, cannot change them.
			subKey := f.storeKey(9, auth.GrantAPIKeysManage)
			f.must(req{method: "GET", path: "/api/v1/subaccounts/9/limits", key: subKey}, http.StatusOK, &got)
			f.fails(req{method: "PUT", path: "/api/v1/subaccounts/9/limits", key: subKey, body: `{"limits": {}}`}, http.StatusForbidden, "master")
			f.fails(req{method: "GET", path: "/api/v1/subaccounts/8/limits", key: subKey}, http.StatusNotFound)
			f.fails(req{method: "PUT", path: "/api/v1/subaccounts/9/limits", key: f.admin, body: `{}`}, http.StatusUnprocessableEntity, "limits")
			f.must(req{method: "PUT", path: "/api/v1/subaccounts/9/limits", key: f.admin, body: `{"limits": {}}`}, http.StatusOK, &got)
			if got.Limits != (Limits{}) || got.Usage != nil {
				t.Errorf("after removing: %+v", got)
			}
		})
	}
}
