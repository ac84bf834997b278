package console_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/api"
	"github.com/smtpgw/smtpgw/audit"
	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/console"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// env is a console served over HTTP on a real store.
type env struct {
	t   *testing.T
	st  store.Store
	m   *auth.Manager
	srv *httptest.Server
}

func newEnv(t *testing.T, backend string, idle time.Duration) *env {
	t.Helper()
	st := audit.Wrap(storetest.Open(t, backend), nil)
	v := auth.NewVerifier(st, auth.Config{CacheTTL: time.Hour})
	t.Cleanup(v.Close)
	m := auth.NewManager(st, v)
	apiH := api.New(api.Config{}, st, v, m)
	c, err := console.New(console.Config{IdleTimeout: idle}, st, v, m, apiH)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return &env{t: t, st: st, m: m, srv: srv}
}

// key creates a key and returns it with its id.
func (e *env) key(p auth.CreateParams) (string, string) {
	e.t.Helper()
	if p.Label == "" {
		p.Label = "admin"
	}
	if p.Subaccount != 0 { // keys belong to existing subaccounts
		err := e.st.CreateSubaccount(context.Background(), &store.Subaccount{ID: p.Subaccount, Name: "tenant"})
		if err != nil && !errors.Is(err, store.ErrExists) {
			e.t.Fatal(err)
		}
	}
	key, k, err := e.m.Create(context.Background(), p)
	if err != nil {
		e.t.Fatal(err)
	}
	return key, k.ID
}

// browser is an HTTP client with cookies that does not follow redirects.
type browser struct {
	t *testing.T
	c *http.Client
	e *env
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: e.t, e: e, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(method, path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.srv.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	page, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp, string(page)
}

var csrfRe = regexp.MustCompile(`name="csrf_token" value="([^"]+)"`)

// token returns the CSRF token of a page.
func (b *browser) token(page string) string {
	b.t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		b.t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return m[1]
}

// signIn signs in with key and fails the test unless it worked.
func (b *browser) signIn(key string) {
	b.t.Helper()
	_, page := b.do("GET", "/signin", nil)
	resp, page := b.do("POST", "/signin", url.Values{"csrf_token": {b.token(page)}, "key": {key}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/keys" {
		b.t.Fatalf("sign in: %s, want 303 to /keys:\n%s", resp.Status, page)
	}
}

func TestContentSecurityPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "sqlite", 0)
	admin, _ := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}})
	b := e.browser()
	b.signIn(admin)
	for _, path := range []string{"/signin", "/keys", "/keys/new", "/domains", "/queue", "/events", "/nowhere", "/static/console.css"} {
		resp, _ := b.do("GET", path, nil)
		h := resp.Header
		// Pinned: loosening the policy must be a deliberate change here.
		if got, want := h.Get("Content-Security-Policy"), "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"; got != want {
			t.Errorf("%s: Content-Security-Policy %q, want %q", path, got, want)
		}
		for name, want := range map[string]string{"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"} {
			if got := h.Get(name); got != want {
				t.Errorf("%s: %s %q, want %q", path, name, got, want)
			}
		}
		if !strings.HasPrefix(path, "/static/") && h.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: Cache-Control %q, want no-store", path, h.Get("Cache-Control"))
		}
	}
}

func TestSignIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "sqlite", 0)
	admin, _ := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}})
	inject, _ := e.key(auth.CreateParams{Grants: []string{auth.GrantSMTPInject}})
	far, _ := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}, AllowedIPs: []string{"192.0.2.0/24"}})

	b := e.browser()
	if resp, _ := b.do("GET", "/keys", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin" {
		t.Fatalf("signed out /keys: %s to %q, want 303 to /signin", resp.Status, resp.Header.Get("Location"))
	}
	for _, c := range []struct {
		name, token, key string // token: "page" for the sign-in page's
		status           int
		says             string
	}{
		{"no token", "", admin, http.StatusForbidden, "security token"},
		{"wrong token", "forged", admin, http.StatusForbidden, "security token"},
		{"unknown key", "page", strings.Repeat("a", 40), http.StatusUnauthorized, "unknown, deleted, or not allowed"},
		{"without the grant", "page", inject, http.StatusForbidden, "api_keys/manage"},
		{"address not allowed", "page", far, http.StatusUnauthorized, "not allowed from this address"},
	} {
		_, page := b.do("GET", "/signin", nil)
		token := c.token
		if token == "page" {
			token = b.token(page)
		}
		resp, page := b.do("POST", "/signin", url.Values{"csrf_token": {token}, "key": {c.key}})
		if resp.StatusCode != c.status || !strings.Contains(page, c.says) {
			t.Errorf("%s: %s, want %d saying %q:\n%s", c.name, resp.Status, c.status, c.says, page)
		}
		if strings.Contains(page, c.key) {
			t.Errorf("%s: the refused key is shown back", c.name)
		}
	}
	_, page := b.do("GET", "/signin", nil)
	token := b.token(page)

	resp, _ := b.do("POST", "/signin", url.Values{"csrf_token": {token}, "key": {admin}})
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "smtpgw_session" {
			cookie = c
		}
		if strings.Contains(c.Value, admin) {
			t.Errorf("cookie %s holds the key", c.Name)
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == nil {
		t.Fatalf("sign in: %s, session cookie %v", resp.Status, cookie)
	}
	if !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Secure || cookie.Path != "/" {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/ (not Secure over HTTP)", cookie)
	}
	resp, page = b.do("GET", "/keys", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "API keys") {
		t.Fatalf("/keys after sign-in: %s", resp.Status)
	}
	if resp, _ := b.do("GET", "/signin", nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/keys" {
		t.Errorf("/signin when signed in: %s to %q, want 303 to /keys", resp.Status, resp.Header.Get("Location"))
	}

	// Sign-out ends the session in the store: the old cookie is refused.
	resp, _ = b.do("POST", "/signout", url.Values{"csrf_token": {b.token(page)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign out: %s", resp.Status)
	}
	replay := e.browser()
	replay.c.Jar.SetCookies(mustURL(t, e.srv.URL), []*http.Cookie{{Name: "smtpgw_session", Value: cookie.Value}})
	if resp, _ := replay.do("GET", "/keys", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("old session after sign-out: %s, want 303 to /signin", resp.Status)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestCreateKeyAndCSRF(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "postgres", 0)
	admin, adminID := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}})
	b := e.browser()
	b.signIn(admin)
	_, page := b.do("GET", "/keys/new", nil)
	token := b.token(page)
	form := url.Values{"name": {`<img src=x onerror=alert(1)>`}, "grants": {auth.GrantSMTPInject}, "allowed_ips": {"127.0.0.1, 10.0.0.0/8"}}

	// Without the token nothing is created.
	resp, _ := b.do("POST", "/keys/new", form)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST without CSRF token: %s, want 403", resp.Status)
	}
	form.Set("csrf_token", "forged")
	if resp, _ := b.do("POST", "/keys/new", form); resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST with a wrong CSRF token: %s, want 403", resp.Status)
	}
	if keys, _, _ := e.m.List(context.Background(), store.KeyFilter{}); len(keys) != 1 {
		t.Fatalf("%d keys after refused POSTs, want only the admin's", len(keys))
	}

	// Validation errors come back beside their field, with auth's rules.
	form.Set("csrf_token", token)
	form.Set("allowed_ips", "10.0.0.0/33")
	resp, page = b.do("POST", "/keys/new", form)
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(page, `id="allowed_ips-error"`) ||
		!strings.Contains(page, "10.0.0.0/33") {
		t.Errorf("bad allowed IP: %s, want 422 with the error beside Allowed IPs:\n%s", resp.Status, page)
	}
	form.Set("allowed_ips", "127.0.0.1, 10.0.0.0/8")
	resp, page = b.do("POST", "/keys/new", form)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("create: %s, Cache-Control %q", resp.Status, resp.Header.Get("Cache-Control"))
	}
	m := regexp.MustCompile(`id="new-key" type="text" value="([0-9a-f]{40})" readonly`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no key in a read-only field on the result page:\n%s", page)
	}
	if strings.Contains(page, "<img src=x") || !strings.Contains(page, "&lt;img src=x onerror=alert(1)&gt;") {
		t.Errorf("the label is not escaped:\n%s", page)
	}
	_, page = b.do("GET", "/keys", nil)
	if strings.Contains(page, m[1]) || !strings.Contains(page, m[1][:4]) {
		t.Errorf("the list shows the key, or not its first four characters")
	}

	// The change is in the audit log as the console's, by the signed-in
	// key, from the browser's address.
	entries, err := e.st.ListAudit(context.Background(), store.AuditFilter{ObjectType: audit.ObjectKey})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, a := range entries {
		if a.Action == audit.ActionCreate && a.Actor.Via == audit.ViaConsole {
			found = a.Actor.KeyID == adminID && a.Actor.IP == "127.0.0.1"
		}
	}
	if !found {
		t.Errorf("no audit entry for the key created in the console by %s from 127.0.0.1: %+v", adminID, entries)
	}
}

func TestSessionEnds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "sqlite", 0)
	admin, id := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}})
	b := e.browser()
	b.signIn(admin)
	// The grant removed (through a Manager sharing the Verifier): the next
	// request ends the session.
	if _, err := e.m.Update(context.Background(), id, auth.UpdateParams{Grants: []string{auth.GrantSMTPInject}}); err != nil {
		t.Fatal(err)
	}
	resp, _ := b.do("GET", "/keys", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin?ended=key" {
		t.Fatalf("after the grant was removed: %s to %q, want 303 to /signin?ended=key", resp.Status, resp.Header.Get("Location"))
	}

	idle := newEnv(t, "sqlite", 50*time.Millisecond)
	admin, _ = idle.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}})
	b = idle.browser()
	b.signIn(admin)
	time.Sleep(100 * time.Millisecond)
	resp, _ = b.do("GET", "/keys", nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin?ended=idle" {
		t.Fatalf("after idle time: %s to %q, want 303 to /signin?ended=idle", resp.Status, resp.Header.Get("Location"))
	}
}

func TestSubaccountScope(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "sqlite", 0)
	_, masterID := e.key(auth.CreateParams{Label: "master app", Grants: []string{auth.GrantSMTPInject}})
	_, otherID := e.key(auth.CreateParams{Label: "other sub app", Grants: []string{auth.GrantSMTPInject}, Subaccount: 8})
	_, ownID := e.key(auth.CreateParams{Label: "own app", Grants: []string{auth.GrantSMTPInject}, Subaccount: 7})
	sub, _ := e.key(auth.CreateParams{Label: "sub admin", Grants: []string{auth.GrantAPIKeysManage}, Subaccount: 7})
	b := e.browser()
	b.signIn(sub)
	_, page := b.do("GET", "/keys", nil)
	if !strings.Contains(page, ownID) || strings.Contains(page, masterID) || strings.Contains(page, otherID) {
		t.Errorf("subaccount 7's list: want own key only:\n%s", page)
	}
	for _, id := range []string{masterID, otherID} {
		if resp, _ := b.do("GET", "/keys/"+id+"/edit", nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("edit another account's key: %s, want 404", resp.Status)
		}
		resp, _ := b.do("POST", "/keys/"+id+"/delete", url.Values{"csrf_token": {b.token(page)}})
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("delete another account's key: %s, want 404", resp.Status)
		}
	}
	// A key created by the subaccount admin belongs to its subaccount,
	// whatever the form says.
	_, page = b.do("GET", "/keys/new", nil)
	resp, _ := b.do("POST", "/keys/new", url.Values{"csrf_token": {b.token(page)}, "name": {"new"},
		"grants": {auth.GrantSMTPInject}, "subaccount": {"0"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create as subaccount admin: %s", resp.Status)
	}
	seven := int64(7)
	keys, _, err := e.m.List(context.Background(), store.KeyFilter{Label: "new", Subaccount: &seven})
	if err != nil || len(keys) != 1 {
		t.Errorf("the new key is not subaccount 7's: %d keys, %v", len(keys), err)
	}
}

func TestEventSearch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "sqlite", 0)
	now := time.Now()
	if err := e.st.AddEvents(context.Background(), []store.Event{
		{Type: store.EventDelivery, Time: now.Add(-time.Minute), MessageID: "m1", Recipient: "ann@example.com", CampaignID: "spring"},
		{Type: store.EventBounce, Time: now.Add(-2 * time.Minute), MessageID: "m2", Recipient: "joe@example.com", CampaignID: "spring", Reply: "550 <b>no</b>"},
		{Type: store.EventDelivery, Time: now.Add(-3 * time.Minute), MessageID: "m3", Recipient: "shop@example.com", Subaccount: 5},
	}); err != nil {
		t.Fatal(err)
	}
	master, _ := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}})
	sub, _ := e.key(auth.CreateParams{Grants: []string{auth.GrantAPIKeysManage}, Subaccount: 5})
	b := e.browser()
	b.signIn(master)
	for _, c := range []struct {
		query      string
		want, not  []string
		wantStatus int
	}{
		{"", []string{"ann@", "joe@", "shop@"}, nil, 200},
		{"?recipient=joe@example.com", []string{"joe@"}, []string{"ann@", "shop@"}, 200},
		{"?campaign=spring&type=delivery", []string{"ann@"}, []string{"joe@", "shop@"}, 200},
		{"?message_id=m3", []string{"shop@"}, []string{"ann@"}, 200},
		{"?from=" + now.Add(-150*time.Second).UTC().Format("2006-01-02T15:04:05"), []string{"ann@", "joe@"}, []string{"shop@"}, 200},
		{"?from=yesterday", []string{"is not a time"}, nil, 422},
	} {
		resp, page := b.do("GET", "/events"+c.query, nil)
		if resp.StatusCode != c.wantStatus {
			t.Errorf("%s: %s, want %d", c.query, resp.Status, c.wantStatus)
		}
		for _, w := range c.want {
			if !strings.Contains(page, w) {
				t.Errorf("%s: %q not shown", c.query, w)
			}
		}
		for _, n := range c.not {
			if strings.Contains(page, n) {
				t.Errorf("%s: %q shown", c.query, n)
			}
		}
		if strings.Contains(page, "<b>no</b>") {
			t.Errorf("%s: a reply is not escaped", c.query)
		}
	}
	s := e.browser()
	s.signIn(sub)
	if _, page := s.do("GET", "/events", nil); !strings.Contains(page, "shop@") || strings.Contains(page, "ann@") {
		t.Errorf("subaccount 5 sees other accounts' events, or not its own")
	}
}
