package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/config"
	"github.com/smtpgw/smtpgw/internal/storetest"
)

// TestAdminHandlerMountsAPI checks the HTTP listener's routing: the JSON
// APIs under /api/, health checks without a key, and /metrics behind
// metrics/view when the listener is public.
func TestAdminHandlerMountsAPI(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	v := auth.NewVerifier(st, auth.Config{})
	t.Cleanup(v.Close)
	cfg := config.Default()
	log := slog.New(slog.DiscardHandler)
	var down atomic.Bool
	public := &net.TCPAddr{IP: net.ParseIP("192.0.2.10"), Port: 8025}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "test_total", Help: "a test counter"}))
	srv := httptest.NewServer(adminHandler(st, v, reg, &down, public, log, apiHandler(cfg, st, v, nil, nil, log), nil))
	t.Cleanup(srv.Close)

	m := auth.NewManager(st, nil)
	admin, _, err := m.Create(context.Background(), auth.CreateParams{Label: "a", Grants: []string{auth.GrantAPIKeysManage}})
	if err != nil {
		t.Fatal(err)
	}
	scrape, _, err := m.Create(context.Background(), auth.CreateParams{Label: "p", Grants: []string{auth.GrantMetricsView}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path, key string) (int, string) {
		t.Helper()
		r, err := http.NewRequest("GET", srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if key != "" {
			r.Header.Set("Authorization", key)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		path, key string
		code      int
		body      string
	}{
		{"/api/v1/api-keys", "", 401, `"errors"`},
		{"/api/v1/api-keys", admin, 200, `"label":"a"`},
		{"/api/v1/nothing", admin, 404, `"errors"`},
		{"/healthz", "", 200, "ok"},
		{"/readyz", "", 200, "ready"},
		{"/metrics", "", 401, "Unauthorized"},
		{"/metrics", admin, 401, "Unauthorized"},
		{"/metrics", "Bearer " + scrape, 200, "test_total 0"},
	} {
		code, body := get(c.path, c.key)
		if code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("GET %s: %d %q, want %d with %q", c.path, code, body, c.code, c.body)
		}
	}
}

// TestMetricsAndAPIShareFailureBudget: wrong keys at /metrics (on a
// public listener) and at the API spend one budget per client address; once
// it is spent both answer 429 with Retry-After without looking the key up,
// even a right one.
func TestMetricsAndAPIShareFailureBudget(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	v := auth.NewVerifier(st, auth.Config{MaxFailures: 4, FailureWindow: time.Minute})
	t.Cleanup(v.Close)
	cfg := config.Default()
	log := slog.New(slog.DiscardHandler)
	var down atomic.Bool
	public := &net.TCPAddr{IP: net.ParseIP("192.0.2.10"), Port: 8025}
	srv := httptest.NewServer(adminHandler(st, v, prometheus.NewRegistry(), &down, public, log, apiHandler(cfg, st, v, nil, nil, log), nil))
	t.Cleanup(srv.Close)
	scrape, _, err := auth.NewManager(st, nil).Create(context.Background(),
		auth.CreateParams{Label: "p", Grants: []string{auth.GrantMetricsView, auth.GrantAPIKeysManage}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path, key string) (int, string) {
		t.Helper()
		r, err := http.NewRequest("GET", srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", key)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	wrong := strings.Repeat("0", 40)
	for i, path := range []string{"/metrics", "/api/v1/api-keys", "/metrics", "/api/v1/api-keys"} {
		if code, _ := get(path, wrong); code != http.StatusUnauthorized {
			t.Fatalf("wrong key %d at %s: %d, want 401", i+1, path, code)
		}
	}
	for _, path := range []string{"/metrics", "/api/v1/api-keys"} {
		code, after := get(path, scrape)
		if code != http.StatusTooManyRequests {
			t.Fatalf("right key at %s after 4 failures: %d, want 429", path, code)
		}
		if n, err := strconv.Atoi(after); err != nil || n < 1 || n > 15 {
			t.Errorf("%s: Retry-After %q, want 1..15 seconds (a minute / 4)", path, after)
		}
	}
}
