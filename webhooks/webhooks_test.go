package webhooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/logtest"
	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

func TestSignVerify(t *testing.T) {
	body := []byte(`[{"msys":{}}]`)
	at := time.Unix(1700000000, 0)
	h := Sign("secret-secret-16", at, body)
	if !strings.HasPrefix(h, "t=1700000000,v1=") || len(h) != len("t=1700000000,v1=")+64 {
		t.Fatalf("signature %q", h)
	}
	if !Verify("secret-secret-16", h, body, at.Add(time.Minute), 5*time.Minute) {
		t.Error("a good signature does not verify")
	}
	for name, ok := range map[string]bool{
		"other body":   Verify("secret-secret-16", h, []byte(`[]`), at, time.Minute),
		"other secret": Verify("secret-secret-17", h, body, at, time.Minute),
		"too old":      Verify("secret-secret-16", h, body, at.Add(time.Hour), 5*time.Minute),
		"garbage":      Verify("secret-secret-16", "v1=00", body, at, time.Minute),
	} {
		if ok {
			t.Errorf("%s verifies", name)
		}
	}
}

func TestAllowedAddr(t *testing.T) {
	for _, a := range []string{"127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
		"fe80::1", "fd00:ec2::254", "100.64.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "224.0.0.1"} {
		if AllowedAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s allowed", a)
		}
	}
	for _, a := range []string{"93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"} {
		if !AllowedAddr(netip.MustParseAddr(a)) {
			t.Errorf("%s refused", a)
		}
	}
}

// TestGuardAtConnect: without allow_private_targets a target on loopback is
// refused when the connection is made, by address or by a name that
// resolves to it; nothing reaches the server. With it, the POST goes.
func TestGuardAtConnect(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
	}))
	defer srv.Close()
	byName := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	strict := NewSender(Config{})
	for _, target := range []string{srv.URL, byName} {
		res := strict.Post(context.Background(), &store.Webhook{ID: "w", Target: target}, "b", []byte("[]"))
		if !errors.Is(res.Err, ErrForbiddenTarget) {
			t.Errorf("POST to %s: %v, want ErrForbiddenTarget", target, res.Summary())
		}
	}
	if hits != 0 {
		t.Errorf("%d requests reached the loopback server", hits)
	}
	open := NewSender(Config{AllowPrivateTargets: true})
	if res := open.Post(context.Background(), &store.Webhook{ID: "w", Target: srv.URL}, "b", []byte("[]")); !res.OK() {
		t.Errorf("with allow_private_targets: %s", res.Summary())
	}
}

// receiver is a webhook endpoint that fails its first fails requests.
type receiver struct {
	t      *testing.T
	secret string
	mu     sync.Mutex
	fails  int
	posts  int
	events map[string]int // event_id -> times accepted
	seen   map[string]int // batch id -> times accepted
	bad    []string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.posts++
	if u, p, ok := r.BasicAuth(); !ok || u != "hook" || p != "pw" {
		rc.bad = append(rc.bad, "basic auth missing")
	}
	if !Verify(rc.secret, r.Header.Get(SignatureHeader), body, time.Now(), time.Minute) {
		rc.bad = append(rc.bad, "bad signature")
	}
	if rc.fails > 0 {
		rc.fails--
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	id := r.Header.Get(BatchHeader)
	if id == "" {
		rc.bad = append(rc.bad, "no batch id")
	}
	var batch []struct {
		Msys struct {
			MessageEvent map[string]any `json:"message_event"`
		} `json:"msys"`
	}
	if err := json.Unmarshal(body, &batch); err != nil {
		rc.bad = append(rc.bad, "bad body "+err.Error())
	}
	if len(batch) == 1 && batch[0].Msys.MessageEvent == nil {
		return // a test POST
	}
	rc.seen[id]++
	for _, b := range batch {
		rc.events[fmt.Sprint(b.Msys.MessageEvent["event_id"])]++
	}
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.events)
}

// TestDeliveryRetries: a receiver down for its first requests gets every
// event exactly once after retries, in SparkPost's format, signed and
// authenticated; batch-status shows the failed and successful attempts;
// with two services on one store, still once (two nodes, one PostgreSQL).
func TestDeliveryRetries(t *testing.T) {
	t.Parallel()
	for _, backend := range storetest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, backend)
			rc := &receiver{t: t, secret: "0123456789abcdef-secret", events: map[string]int{}, seen: map[string]int{}}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			cfg := Config{AllowPrivateTargets: true, RetryInitial: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond,
				BatchInterval: 20 * time.Millisecond, BatchSize: 7, Timeout: 5 * time.Second}
			m := NewManager(cfg, st)
			ctx := context.Background()
			name, target, auth, secret := "hook", srv.URL, AuthBasic, rc.secret
			w, err := m.Create(ctx, nil, Input{Name: &name, Target: &target, AuthType: &auth,
				AuthRequestDetails: &authDetails{Username: "hook", Password: "pw"}, SigningSecret: &secret,
				Events: &[]string{"injection", "bounce"}})
			if err != nil {
				t.Fatal(err)
			}
			rc.mu.Lock()
			rc.fails = 5
			rc.mu.Unlock()
			nodes := 1
			if backend == "postgres" {
				nodes = 2
			}
			for i := range nodes {
				c := cfg
				c.Node = fmt.Sprintf("node%d", i)
				s := NewService(c, st)
				if err := s.Start(ctx); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(s.Stop)
			}
			const n = 60
			var evs []store.Event
			for i := range n {
				typ := store.EventInjection
				if i%3 == 0 {
					typ = store.EventBounce
				}
				evs = append(evs, store.Event{Type: typ, MessageID: fmt.Sprintf("m%d", i), Recipient: "r@example.net"})
			}
			evs = append(evs, store.Event{Type: store.EventDelivery, MessageID: "not-subscribed"})
			for i := 0; i < len(evs); i += 10 {
				if err := st.AddEvents(ctx, evs[i:min(i+10, len(evs))]); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(30 * time.Second)
			for rc.count() < n && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // let a duplicate, if any, arrive
			rc.mu.Lock()
			defer rc.mu.Unlock()
			if len(rc.events) != n {
				t.Fatalf("%d distinct events received, want %d", len(rc.events), n)
			}
			for id, c := range rc.events {
				if c != 1 {
					t.Errorf("event %s received %d times", id, c)
				}
			}
			for id, c := range rc.seen {
				if c != 1 {
					t.Errorf("batch %s accepted %d times", id, c)
				}
			}
			if len(rc.bad) > 0 {
				t.Errorf("bad requests: %v", rc.bad)
			}
			// The receiver counts a batch when it reads it; the service
			// records the attempt once the answer is back, a moment later.
			var failed, ok int
			for end := time.Now().Add(10 * time.Second); ; {
				at, err := m.BatchStatus(ctx, w.ID, 1000)
				if err != nil {
					t.Fatal(err)
				}
				failed, ok = 0, 0
				for _, a := range at {
					switch a.ResponseCode {
					case 503:
						failed++
					case 200:
						ok++
					}
				}
				if (failed == 5 && ok == len(rc.seen)) || time.Now().After(end) {
					break
				}
				rc.mu.Unlock()
				time.Sleep(50 * time.Millisecond)
				rc.mu.Lock()
			}
			if failed != 5 || ok != len(rc.seen) {
				t.Errorf("batch-status: %d failed (want 5), %d ok (want %d)", failed, ok, len(rc.seen))
			}
		})
	}
}

// TestOAuth2Refresh: the token is fetched with client credentials, cached,
// and fetched again when the target answers 401.
func TestOAuth2Refresh(t *testing.T) {
	var mu sync.Mutex
	issued, valid := 0, ""
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "client_credentials" ||
			r.PostForm.Get("client_id") != "id" || r.PostForm.Get("client_secret") != "sec" {
			http.Error(w, "bad client", http.StatusBadRequest)
			return
		}
		mu.Lock()
		issued++
		valid = fmt.Sprintf("tok%d", issued)
		mu.Unlock()
		fmt.Fprintf(w, `{"access_token":%q,"token_type":"bearer","expires_in":3600}`, valid)
	}))
	defer tokens.Close()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+valid {
			http.Error(w, "expired", http.StatusUnauthorized)
		}
	}))
	defer target.Close()
	w := &store.Webhook{ID: "w", Target: target.URL, AuthType: AuthOAuth2}
	w.Auth, _ = json.Marshal(authDetails{URL: tokens.URL, Body: map[string]string{"client_id": "id", "client_secret": "sec"}})
	s := NewSender(Config{AllowPrivateTargets: true})
	for range 3 {
		if res := s.Post(context.Background(), w, "b", []byte("[]")); !res.OK() {
			t.Fatalf("POST: %s", res.Summary())
		}
	}
	if issued != 1 {
		t.Errorf("%d tokens issued for 3 POSTs, want 1 (cached)", issued)
	}
	mu.Lock()
	valid = "revoked-by-the-server"
	mu.Unlock()
	if res := s.Post(context.Background(), w, "b", []byte("[]")); !res.OK() || issued != 2 {
		t.Errorf("after a 401: %s, %d tokens issued, want a refresh and 2xx", res.Summary(), issued)
	}
}

func TestInputValidation(t *testing.T) {
	str := func(s string) *string { return &s }
	for _, c := range []struct {
		in   Input
		want string
	}{
		{Input{Name: str(""), Target: str("https://x.example")}, "name"},
		{Input{Name: str("n"), Target: str("ftp://x.example")}, "target"},
		{Input{Name: str("n"), Target: str("https://u:p@x.example")}, "target"},
		{Input{Name: str("n"), Target: str("https://x.example"), Events: &[]string{"nope"}}, "unknown event type"},
		{Input{Name: str("n"), Target: str("https://x.example"), AuthType: str("digest")}, "auth_type"},
		{Input{Name: str("n"), Target: str("https://x.example"), AuthType: str("basic")}, "username"},
		{Input{Name: str("n"), Target: str("https://x.example"), AuthType: str("oauth2"),
			AuthRequestDetails: &authDetails{URL: "https://t.example"}}, "client_id"},
		{Input{Name: str("n"), Target: str("https://x.example"), CustomHeaders: &map[string]string{"Authorization": "x"}}, "custom_headers"},
		{Input{Name: str("n"), Target: str("https://x.example"), SigningSecret: str("short")}, "signing_secret"},
	} {
		w := &store.Webhook{}
		err := c.in.apply(w)
		if err == nil || !IsClientError(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("apply(%+v) = %v, want an error about %s", c.in, err, c.want)
		}
	}
}

// TestHoldWarning: on PostgreSQL a transaction left open holds webhook
// events back; the service warns, naming its session, and says when it
// ended.
func TestHoldWarning(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "postgres")
	ctx := context.Background()
	if err := st.CreateWebhook(ctx, &store.Webhook{ID: "w", Name: "hook", Target: "https://example.com/hook",
		Events: []string{"delivery"}, Active: true}); err != nil {
		t.Fatal(err)
	}
	open := pgtest.BeginOpenTx(t, "left_open")
	logs := &logtest.Buffer{}
	s := NewService(Config{AllowPrivateTargets: true, BatchInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}, st)
	s.hold.warnAfter = 300 * time.Millisecond
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	waitLog := func(what string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			// Newer transactions commit, so the open one holds events back.
			if err := st.AddEvents(ctx, []store.Event{{Type: store.EventDelivery, MessageID: "m"}}); err != nil {
				t.Fatal(err)
			}
			l := logs.String()
			found := true
			for _, w := range want {
				found = found && strings.Contains(l, w)
			}
			if found {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s in the log:\n%s", what, l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitLog("warning naming the open transaction", "level=WARN msg=\"webhook events held back",
		fmt.Sprintf("pid=%d", open.PID), "application=left_open", "state=\"idle in transaction\"")
	open.Commit(t)
	waitLog("notice that it ended", "level=INFO msg=\"webhook events no longer held back\"")
}
