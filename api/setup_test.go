package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/logtest"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// fixture is a running API on a real store, with a master key holding
// every enforced grant.
type fixture struct {
	t     *testing.T
	st    store.Store
	url   string
	admin string // master-account key with every enforced grant
	logs  *logtest.Buffer
}

// setup starts the API on a fresh store of backend behind a real HTTP
// server. The Verifier caches keys for an hour, so a deleted key refused
// at once proves eviction, not expiry.
func setup(t *testing.T, backend string, cfg Config) *fixture {
	t.Helper()
	st := storetest.Open(t, backend)
	return setupStore(t, st, auth.Config{CacheTTL: time.Hour}, cfg)
}

func setupStore(t *testing.T, st store.Store, acfg auth.Config, cfg Config) *fixture {
	t.Helper()
	logs := &logtest.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v := auth.NewVerifier(st, acfg)
	t.Cleanup(v.Close)
	srv := httptest.NewServer(New(cfg, st, v, auth.NewManager(st, v)))
	t.Cleanup(srv.Close)
	f := &fixture{t: t, st: st, url: srv.URL, logs: logs}
	f.admin = f.storeKey(0, auth.EnforcedGrants...)
	t.Cleanup(func() {
		if strings.Contains(logs.String(), f.admin) {
			t.Errorf("the admin key appears in the log:\n%s", logs.String())
		}
	})
	return f
}

// storeKey creates a key directly with the Manager (not through the API).
func (f *fixture) storeKey(sub int64, grants ...string) string {
	f.t.Helper()
	f.subaccount(sub)
	key, _, err := auth.NewManager(f.st, nil).Create(context.Background(),
		auth.CreateParams{Label: "fixture", Grants: grants, Subaccount: sub})
	if err != nil {
		f.t.Fatalf("create key: %v", err)
	}
	return key
}

// req is one API request.
type req struct {
	method string
	path   string
	key    string            // sent bare in Authorization, as SparkPost clients do; "" sends none
	body   string            // raw JSON
	header map[string]string // extra headers
}

// do sends q and returns the status and body.
func (f *fixture) do(q req) (int, []byte) {
	f.t.Helper()
	var body io.Reader
	if q.body != "" {
		body = strings.NewReader(q.body)
	}
	r, err := http.NewRequest(q.method, f.url+q.path, body)
	if err != nil {
		f.t.Fatalf("new request: %v", err)
	}
	if q.key != "" {
		r.Header.Set("Authorization", q.key)
	}
	if q.body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	for k, v := range q.header {
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		f.t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatalf("%s %s: read body: %v", q.method, q.path, err)
	}
	if resp.StatusCode != http.StatusNoContent {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			f.t.Errorf("%s %s: Content-Type %q, want application/json", q.method, q.path, ct)
		}
	}
	return resp.StatusCode, b
}

// must sends q, fails the test unless the status is want, and decodes the
// results into out (if not nil).
func (f *fixture) must(q req, want int, out any) []byte {
	f.t.Helper()
	code, b := f.do(q)
	if code != want {
		f.t.Fatalf("%s %s: status %d, want %d\n%s", q.method, q.path, code, want, b)
	}
	if out != nil {
		var res struct {
			Results json.RawMessage `json:"results"`
		}
		if err := json.Unmarshal(b, &res); err != nil {
			f.t.Fatalf("%s %s: %v\n%s", q.method, q.path, err, b)
		}
		// Decode into a zero value: json reuses the elements of a slice,
		// keeping fields the new answer omits.
		reflect.ValueOf(out).Elem().SetZero()
		if err := json.Unmarshal(res.Results, out); err != nil {
			f.t.Fatalf("%s %s: results: %v\n%s", q.method, q.path, err, b)
		}
	}
	return b
}

// fails sends q and checks the status and that the error's description
// contains each of want.
func (f *fixture) fails(q req, status int, want ...string) {
	f.t.Helper()
	code, b := f.do(q)
	if code != status {
		f.t.Fatalf("%s %s: status %d, want %d\n%s", q.method, q.path, code, status, b)
	}
	var res errorBody
	if err := json.Unmarshal(b, &res); err != nil || len(res.Errors) != 1 || res.Errors[0].Message == "" {
		f.t.Fatalf("%s %s: not a SparkPost error answer: %v\n%s", q.method, q.path, err, b)
	}
	for _, w := range want {
		if !strings.Contains(res.Errors[0].Description, w) {
			f.t.Errorf("%s %s: description %q lacks %q", q.method, q.path, res.Errors[0].Description, w)
		}
	}
}

// subaccount creates subaccount id (active) in the store unless it is 0
// or exists: keys belong only to existing subaccounts.
func (f *fixture) subaccount(id int64) {
	f.t.Helper()
	if id == 0 {
		return
	}
	err := f.st.CreateSubaccount(context.Background(), &store.Subaccount{ID: id, Name: fmt.Sprintf("tenant %d", id)})
	if err != nil && !errors.Is(err, store.ErrExists) {
		f.t.Fatalf("create subaccount %d: %v", id, err)
	}
}
