package tests

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// screenshotsEnv names a directory where TestConsoleInBrowser saves a PNG of
// each console page (docs/console/ holds the ones docs/console.md shows):
//
//	SMTPGW_TEST_SCREENSHOTS=$PWD/docs/console go test ./tests -run TestConsoleInBrowser
const screenshotsEnv = "SMTPGW_TEST_SCREENSHOTS"

// newBrowser starts one headless Chromium for a test and returns the
// context of its first tab. Other tabs (chromedp.NewContext on it) share
// the browser; chromedp.WithNewBrowserContext gives them cookies of their
// own.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatal("no Chromium to drive the console tests: install it (apt-get install -y chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // CI runs as root
		chromedp.WindowSize(1280, 820),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("hide-scrollbars", true),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", path, err)
	}
	return ctx
}

// tab drives one browser tab with a deadline per step, failing the test
// on the first error.
type tab struct {
	t    *testing.T
	ctx  context.Context
	base string
	// dialogs counts JavaScript dialogs opened (alert, confirm...), which
	// the console never opens: one means injected script ran.
	dialogs atomic.Int32
	shots   string // screenshot directory ("" takes none)
}

func newTab(t *testing.T, parent context.Context, base string, own bool) *tab {
	t.Helper()
	var opts []chromedp.ContextOption
	if own {
		opts = append(opts, chromedp.WithNewBrowserContext())
	}
	ctx, cancel := chromedp.NewContext(parent, opts...)
	t.Cleanup(cancel)
	tb := &tab{t: t, ctx: ctx, base: base, shots: os.Getenv(screenshotsEnv)}
	if err := chromedp.Listen(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			tb.dialogs.Add(1)
		}
	}); err != nil {
		t.Fatalf("open tab: %v", err)
	}
	return tb
}

// do runs steps with a deadline.
func (tb *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		tb.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func evalIn[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tb.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// text is the page's visible text; html its markup; path its location's
// path.
func (tb *tab) text() string { tb.t.Helper(); return evalIn[string](tb, `document.body.innerText`) }
func (tb *tab) html() string {
	tb.t.Helper()
	return evalIn[string](tb, `document.documentElement.outerHTML`)
}
func (tb *tab) path() string {
	tb.t.Helper()
	return evalIn[string](tb, `location.pathname + location.search`)
}

// waitPath waits until the location's path and query contain part, that
// is, until the navigation a click started has arrived.
func (tb *tab) waitPath(part string) {
	tb.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(tb.path(), part) {
		if time.Now().After(deadline) {
			tb.t.Fatalf("the page is still %s, want one with %q", tb.path(), part)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// open navigates to a console path.
func (tb *tab) open(path string) {
	tb.t.Helper()
	tb.do("open "+path, chromedp.Navigate(tb.base+path))
}

// shot saves a full-page screenshot as name.png when screenshots are asked
// for.
func (tb *tab) shot(name string) {
	tb.t.Helper()
	if tb.shots == "" {
		return
	}
	ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(tb.shots, name+".png"), png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

// Selectors by what the admin reads: a field by its label, a button or a
// link by its text.
func field(label string) chromedp.Search {
	return chromedp.Search(fmt.Sprintf(`//*[@id=//label[normalize-space()=%q]/@for]`, label))
}
func button(text string) chromedp.Search {
	return chromedp.Search(fmt.Sprintf(`//button[normalize-space()=%q]`, text))
}
func link(text string) chromedp.Search {
	return chromedp.Search(fmt.Sprintf(`//a[normalize-space()=%q]`, text))
}

// signIn signs in on the sign-in page with key and waits for the key list.
func (tb *tab) signIn(key string) {
	tb.t.Helper()
	tb.open("/")
	tb.do("sign in",
		chromedp.WaitVisible(field("API key")),
		chromedp.SendKeys(field("API key"), key),
		chromedp.Click(button("Sign in")),
		chromedp.WaitVisible(chromedp.ID("keys")),
	)
}

// cliKey creates a key with the CLI and returns the key and its id.
func cliKey(t *testing.T, g *Gateway, label string, args ...string) (string, string) {
	t.Helper()
	out := g.MustCLI(append([]string{"keys", "create", "--label", label, "--json"}, args...)...)
	var res struct {
		Results struct {
			ID  string `json:"id"`
			Key string `json:"key"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Results.Key) != 40 {
		t.Fatalf("keys create --json: %v\n%s", err, out)
	}
	return res.Results.Key, res.Results.ID
}

// submit sends one message over SMTP (STARTTLS, AUTH PLAIN) with key; it
// returns the error of AUTH or of the transaction.
func submit(g *Gateway, key, rcpt string) error {
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		return err
	}
	if err := c.Mail("app@example.com", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	msg := "From: app@example.com\r\nTo: " + rcpt + "\r\nSubject: console\r\n" +
		"X-MSYS-API: {\"campaign_id\": \"spring-sale\"}\r\n\r\nhello\r\n"
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// TestConsoleInBrowser drives the web console in headless Chromium against
// the real binary: SparkPost's key flow from sign-in to revocation, with
// SMTP using the key in between, escaping, CSRF, sign-out and subaccount
// scoping, and the other pages (sending domains, queue, events).
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	browser := newBrowser(t)
	// The relay's smarthost refuses connections, so mail stays deferred
	// on the queue page.
	g := StartGateway(t, Options{Backend: "sqlite", TOML: `
[relay]
mode = "smarthost"
smarthost = "127.0.0.1:1"
smarthost_tls = "none"
retry_initial = "1h"
connect_timeout = "2s"
`})
	base := "http://" + g.HTTP
	adminKey, adminID := cliKey(t, g, "Console admin", "--grant", "api_keys/manage", "--grant", "message_events/view",
		"--grant", "sending_domains/manage")
	cliKey(t, g, "Newsletter app", "--grant", "smtp/inject", "--allowed-ip", "192.0.2.0/24")
	g.MustCLI("subaccounts", "create", "--name", "Shop", "--id", "5")
	subAdmin, _ := cliKey(t, g, "Shop admin", "--grant", "api_keys/manage", "--subaccount", "5")
	_, shopAppID := cliKey(t, g, "Shop checkout app", "--grant", "smtp/inject", "--subaccount", "5")
	if dir := os.Getenv(screenshotsEnv); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	a := newTab(t, browser, base, false)
	a.open("/")
	if p := a.path(); p != "/signin" {
		t.Fatalf("signed out, / leads to %s, want /signin", p)
	}
	a.shot("signin")
	a.signIn(adminKey)

	// Create a key named with markup, every permission ticked by Select all.
	const label = `<img src=x onerror=alert(1)>`
	a.do("open the create form",
		chromedp.Click(link("Create API key")),
		chromedp.WaitVisible(field("Name")),
		chromedp.WaitVisible(chromedp.Search(`//fieldset/legend[normalize-space()='Permissions']`)),
		chromedp.WaitVisible(field("Subaccount")),
		chromedp.WaitVisible(field("Allowed IPs")),
		chromedp.SendKeys(field("Name"), label),
		chromedp.Click(chromedp.Search(`//label[normalize-space()='Select all']`)),
	)
	unticked := evalIn[int](a, `document.querySelectorAll('input[name=grants]:not(:checked)').length`)
	ticked := evalIn[int](a, `document.querySelectorAll('input[name=grants]:checked').length`)
	if unticked != 0 || ticked < 5 {
		t.Fatalf("after Select all: %d permissions ticked, %d not", ticked, unticked)
	}
	a.do("fill the allowed IPs", chromedp.SendKeys(field("Allowed IPs"), "127.0.0.1, 10.0.0.0/8"))
	a.shot("key-create")
	a.do("create", chromedp.Click(button("Create API key")), chromedp.WaitVisible(chromedp.ID("new-key")))

	// The key is shown once, in a read-only field, with a Copy button and
	// the warning.
	key := evalIn[string](a, `document.getElementById('new-key').value`)
	if !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(key) {
		t.Fatalf("the new key field holds %q", key)
	}
	if !evalIn[bool](a, `document.getElementById('new-key').readOnly`) {
		t.Error("the new key's field is not read-only")
	}
	if txt := a.text(); !strings.Contains(txt, "Copy this key now") {
		t.Errorf("no warning to copy the key now:\n%s", txt)
	}
	a.do("copy", chromedp.Click(button("Copy")), chromedp.WaitVisible(button("Copied")))
	a.shot("key-created")
	if p := a.path(); p != "/keys" {
		t.Errorf("the one-time key page's address is %s, want /keys (replaced in the history)", p)
	}

	// SMTP accepts the key copied from the page.
	if err := submit(g, key, "customer@example.net"); err != nil {
		t.Fatalf("send with the new key: %v", err)
	}

	// Reload: the key is gone; the list shows its first four characters and
	// the label as text.
	a.do("reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("keys")))
	if strings.Contains(a.html(), key) {
		t.Fatal("the key is still in the page after a reload")
	}
	newID := evalIn[string](a, fmt.Sprintf(`(Array.from(document.querySelectorAll('tr[data-key-id]')).find(
		r => r.querySelector('.shortkey').textContent === %q) || {dataset: {}}).dataset.keyId || ''`, key[:4]))
	if newID == "" {
		t.Fatalf("the list shows no key starting with %s:\n%s", key[:4], a.text())
	}
	if txt := a.text(); !strings.Contains(txt, label) {
		t.Errorf("the label is not shown as text:\n%s", txt)
	}
	if n := evalIn[int](a, `document.querySelectorAll('img[src="x"]').length`); n != 0 || a.dialogs.Load() != 0 {
		t.Errorf("the label became markup: %d img elements, %d dialogs", n, a.dialogs.Load())
	}
	// Every row's Edit and Delete are in sight in a 1280 px window, not
	// clipped by the table's card (it scrolls sideways when the table is
	// wider than the page).
	if off := evalIn[int](a, `Array.from(document.querySelectorAll('td.actions a')).filter(
		l => l.getBoundingClientRect().right > l.closest('.card').getBoundingClientRect().right).length`); off != 0 {
		t.Errorf("%d Edit/Delete links of the key list are clipped by its card", off)
	}
	a.shot("keys")

	// Edit its permissions: clear all, tick two.
	a.do("edit",
		chromedp.Navigate(base+"/keys/"+newID+"/edit"),
		chromedp.WaitVisible(button("Save changes")),
		chromedp.Click(chromedp.Search(`//label[normalize-space()='Select all']`)),
		chromedp.Click(chromedp.Search(`//label[normalize-space()='smtp/inject']`)),
		chromedp.Click(chromedp.Search(`//label[normalize-space()='message_events/view']`)),
	)
	a.shot("key-edit")
	a.do("save", chromedp.Click(button("Save changes")), chromedp.WaitVisible(chromedp.ID("keys")))
	if txt := a.text(); !strings.Contains(txt, "The API key was updated.") {
		t.Errorf("no notice after saving:\n%s", txt)
	}
	var shown struct {
		Results struct {
			Grants []string `json:"grants"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(g.MustCLI("keys", "show", newID, "--json")), &shown); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(shown.Results.Grants, ","); got != "smtp/inject,message_events/view" {
		t.Errorf("grants after edit: %s, want smtp/inject,message_events/view", got)
	}

	// Sending domains: add one, read its DKIM record.
	a.do("add a sending domain",
		chromedp.Click(link("Sending domains")),
		chromedp.WaitVisible(field("Domain")),
		chromedp.SendKeys(field("Domain"), "mail.example.com"),
		chromedp.Click(button("Add domain")),
		chromedp.WaitVisible(chromedp.ID("dns-value")),
	)
	if v := evalIn[string](a, `document.getElementById('dns-value').value`); !strings.Contains(v, "v=DKIM1") {
		t.Errorf("DKIM record value %q", v)
	}
	a.shot("domain")
	a.open("/domains")
	a.shot("domains")

	// Queue: the message sent above, deferred (the smarthost refuses).
	deadline := time.Now().Add(20 * time.Second)
	for {
		a.open("/queue")
		if evalIn[int](a, `document.querySelectorAll('.state.deferred').length`) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the message never shows deferred on the queue page:\n%s", a.text())
		}
		time.Sleep(300 * time.Millisecond)
	}
	a.shot("queue")
	a.do("open the message", chromedp.Click(chromedp.Search(`//table//a[contains(@href,'/queue/')]`)),
		chromedp.WaitVisible(button("Retry now")))
	if txt := a.text(); !strings.Contains(txt, "customer@example.net") || !strings.Contains(txt, "injection") {
		t.Errorf("the message page lacks its recipient or events:\n%s", txt)
	}
	a.shot("message")
	a.do("retry", chromedp.Click(button("Retry now")), chromedp.WaitVisible(chromedp.Search(`//*[contains(text(),'tried again now')]`)))

	// Events: search by campaign.
	a.do("search events",
		chromedp.Click(link("Events")),
		chromedp.WaitVisible(field("Campaign")),
		chromedp.SendKeys(field("Campaign"), "spring-sale"),
		chromedp.Click(button("Search")),
	)
	// The unfiltered page shows that row too: wait for the search's own
	// page, or the next navigation would cut the search's short.
	a.waitPath("campaign=spring-sale")
	a.do("searched events", chromedp.WaitVisible(chromedp.Search(`//td[normalize-space()='customer@example.net']`)))
	a.shot("events")

	// Delete the key, after the confirmation: SMTP refuses it.
	a.do("delete",
		chromedp.Navigate(base+"/keys"),
		chromedp.WaitVisible(chromedp.ID("keys")),
		chromedp.Click(chromedp.Search(fmt.Sprintf(`//tr[@data-key-id=%q]//a[normalize-space()='Delete']`, newID))),
		chromedp.WaitVisible(button("Delete API key")),
	)
	a.shot("key-delete")
	a.do("confirm delete", chromedp.Click(button("Delete API key")), chromedp.WaitVisible(chromedp.ID("keys")))
	if strings.Contains(a.html(), newID) {
		t.Error("the deleted key is still listed")
	}
	var smtpErr *smtp.SMTPError
	if err := submit(g, key, "customer@example.net"); !errors.As(err, &smtpErr) || smtpErr.Code != 535 {
		t.Errorf("SMTP with the deleted key: %v, want 535", err)
	}

	// A cross-site page posting to the console with the admin's cookie is
	// refused: it has no CSRF token.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s/keys/%s/delete"><button id="go">win a prize</button></form>`, base, adminID)
	}))
	t.Cleanup(evil.Close)
	a.do("forged POST", chromedp.Navigate(evil.URL), chromedp.Click(chromedp.ID("go")),
		chromedp.WaitVisible(chromedp.Search(`//h1[normalize-space()='Forbidden']`)))
	if txt := a.text(); !strings.Contains(txt, "security token") {
		t.Errorf("forged POST: %s", txt)
	}
	if out := g.MustCLI("keys", "show", adminID); !strings.Contains(out, "Console admin") {
		t.Errorf("the admin key is gone after a forged POST:\n%s", out)
	}

	// A subaccount admin, in a browser context of its own, sees its
	// subaccount's keys only.
	s := newTab(t, browser, base, true)
	s.signIn(subAdmin)
	if h := s.html(); !strings.Contains(h, shopAppID) || strings.Contains(h, adminID) || strings.Contains(h, "Newsletter app") {
		t.Errorf("the subaccount admin's list shows other accounts' keys, or not its own:\n%s", s.text())
	}
	s.open("/keys/" + adminID + "/edit")
	if txt := s.text(); !strings.Contains(txt, "no such API key") {
		t.Errorf("the subaccount admin opened the master's key:\n%s", txt)
	}

	// Sign-out ends the session.
	a.open("/keys")
	a.do("sign out", chromedp.Click(button("Sign out")), chromedp.WaitVisible(field("API key")))
	if txt := a.text(); !strings.Contains(txt, "You are signed out.") {
		t.Errorf("no sign-out notice:\n%s", txt)
	}
	a.open("/keys")
	if p := a.path(); p != "/signin" {
		t.Errorf("after sign-out /keys leads to %s, want /signin", p)
	}
	if a.dialogs.Load() != 0 || s.dialogs.Load() != 0 {
		t.Errorf("a JavaScript dialog opened")
	}
	if logs := g.Logs(); strings.Contains(logs, key) || strings.Contains(logs, adminKey) {
		t.Error("a key appears in the gateway's log")
	}
}

// TestConsoleOverHTTPS: http.tls = true serves the console, the API and
// /metrics over HTTPS with the self-signed certificate, and the session
// cookie is Secure.
func TestConsoleOverHTTPS(t *testing.T) {
	t.Parallel()
	g := StartGateway(t, Options{Backend: "sqlite", TOML: "tls = true\n"})
	admin, _ := cliKey(t, g, "admin", "--grant", "api_keys/manage")
	c := &http.Client{
		// The self-signed certificate; a client of a real deployment verifies.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	base := "https://" + g.HTTP
	for _, path := range []string{"/signin", "/metrics", "/healthz"} {
		resp, err := c.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s over HTTPS: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s over HTTPS: %s", path, resp.Status)
		}
	}
	req, _ := http.NewRequest("GET", base+"/api/v1/api-keys", nil)
	req.Header.Set("Authorization", admin)
	resp, err := c.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("API over HTTPS: %v %v", resp, err)
	}
	resp.Body.Close()
	if resp, err := http.Get("http://" + g.HTTP + "/signin"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP is answered on the HTTPS listener")
		}
	}

	// Sign in: the session cookie is Secure.
	resp, err = c.Get(base + "/signin")
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`name="csrf_token" value="([^"]+)"`).FindStringSubmatch(string(page))
	if m == nil {
		t.Fatalf("no CSRF token on the sign-in page")
	}
	req, _ = http.NewRequest("POST", base+"/signin", strings.NewReader("csrf_token="+m[1]+"&key="+admin))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, ck := range resp.Cookies() {
		req.AddCookie(ck)
	}
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var session *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "smtpgw_session" {
			session = ck
		}
	}
	if resp.StatusCode != http.StatusSeeOther || session == nil || !session.Secure || !session.HttpOnly ||
		session.SameSite != http.SameSiteStrictMode {
		t.Errorf("sign-in over HTTPS: %s, session cookie %+v: want Secure, HttpOnly, SameSite=Strict", resp.Status, session)
	}
}
