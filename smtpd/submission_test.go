package smtpd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/smtp"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// submissionCase is one row of the SPEC §4 reply table.
type submissionCase struct {
	name string
	mod  func(*Config)
	// budget is the failed-authentication budget per minute; 0: 100.
	budget int
	run    func(t *testing.T, e *testEnv)
}

// TestSubmission runs the SPEC §4 reply table on SQLite and PostgreSQL.
func TestSubmission(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			for _, tc := range submissionCases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					budget := tc.budget
					if budget == 0 {
						budget = 100
					}
					tc.run(t, setupBudget(t, backend, tc.mod, budget))
				})
			}
		})
	}
}

var queuedRe = regexp.MustCompile(`^2\.0\.0 OK queued as ([0-9a-f]+)$`)

var submissionCases = []submissionCase{
	{name: "success", run: testSuccess},
	{name: "wrong key", run: func(t *testing.T, e *testEnv) {
		c := e.dialTLS()
		err := c.Auth(smtp.PlainAuth("", "SMTP_Injection", "0123456789abcdef0123456789abcdef01234567", "127.0.0.1"))
		wantCode(t, err, 535, "5.7.8")
		wantLog(t, e, "unknown key")
		// The session is still usable: the right key afterwards works
		// (net/smtp quits after a failure: use raw lines).
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.startTLS(e.pair.Client())
		r.cmd(535, "AUTH PLAIN %s", b64("\x00SMTP_Injection\x00"+strings.Repeat("1", 40)))
		r.authPlain("SMTP_Injection", e.key)
	}},
	{name: "not a key", run: func(t *testing.T, e *testEnv) {
		c := e.dialTLS()
		wantCode(t, c.Auth(smtp.PlainAuth("", "SMTP_Injection", "hunter2", "127.0.0.1")), 535, "5.7.8")
	}},
	{name: "key without smtp/inject", run: func(t *testing.T, e *testEnv) {
		key, _ := e.newKey(auth.CreateParams{Label: "events only", Grants: []string{"message_events/view"}})
		c := e.dialTLS()
		wantCode(t, c.Auth(smtp.PlainAuth("", "SMTP_Injection", key, "127.0.0.1")), 535, "5.7.8")
		wantLog(t, e, "missing grant")
	}},
	{name: "key from outside allowed IPs", run: func(t *testing.T, e *testEnv) {
		key, _ := e.newKey(auth.CreateParams{Label: "office", Grants: []string{"smtp/inject"}, AllowedIPs: []string{"192.0.2.0/24"}})
		c := e.dialTLS()
		wantCode(t, c.Auth(smtp.PlainAuth("", "SMTP_Injection", key, "127.0.0.1")), 535, "5.7.8")
		wantLog(t, e, "not allowed")
		key, _ = e.newKey(auth.CreateParams{Label: "local", Grants: []string{"smtp/inject"}, AllowedIPs: []string{"127.0.0.0/8"}})
		if err := e.dialTLS().Auth(smtp.PlainAuth("", "SMTP_Injection", key, "127.0.0.1")); err != nil {
			t.Fatalf("AUTH with a key allowing 127.0.0.0/8: %v", err)
		}
	}},
	{name: "revoked key", run: func(t *testing.T, e *testEnv) {
		if err := e.mgr.Delete(context.Background(), e.keyID); err != nil {
			t.Fatalf("delete key: %v", err)
		}
		wantCode(t, e.dialTLS().Auth(smtp.PlainAuth("", "SMTP_Injection", e.key, "127.0.0.1")), 535, "5.7.8")
		wantLog(t, e, "revoked key")
	}},
	{name: "unknown username", run: func(t *testing.T, e *testEnv) {
		wantCode(t, e.dialTLS().Auth(smtp.PlainAuth("", "someone", e.key, "127.0.0.1")), 535, "5.7.8")
		// Case does not matter.
		if err := e.dialTLS().Auth(smtp.PlainAuth("", "smtp_injection", e.key, "127.0.0.1")); err != nil {
			t.Fatalf("AUTH as smtp_injection: %v", err)
		}
	}},
	{name: "any username", mod: func(c *Config) { c.AuthUsernames = []string{"*"} }, run: func(t *testing.T, e *testEnv) {
		if err := e.dialTLS().Auth(smtp.PlainAuth("", "whatever", e.key, "127.0.0.1")); err != nil {
			t.Fatalf("AUTH with any username allowed: %v", err)
		}
	}},
	{name: "MAIL before AUTH", run: func(t *testing.T, e *testEnv) {
		wantCode(t, e.dialTLS().Mail("sender@example.com"), 530, "5.7.0")
	}},
	{name: "AUTH before STARTTLS", run: func(t *testing.T, e *testEnv) {
		if ok, _ := e.dial().Extension("AUTH"); ok {
			t.Fatal("AUTH advertised before STARTTLS")
		}
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		msg := r.cmd(523, "AUTH PLAIN %s", b64("\x00SMTP_Injection\x00"+e.key))
		if !strings.HasPrefix(msg, "5.7.10 ") {
			t.Fatalf("AUTH before TLS: got %q, want 523 5.7.10", msg)
		}
		r.startTLS(e.pair.Client())
		if !strings.Contains(r.cmd(250, "EHLO client.test"), "AUTH PLAIN LOGIN") {
			t.Fatal("AUTH PLAIN LOGIN not advertised after STARTTLS")
		}
	}},
	{name: "insecure auth allowed", mod: func(c *Config) { c.AllowInsecureAuth = true }, run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		if !strings.Contains(r.cmd(250, "EHLO client.test"), "AUTH PLAIN LOGIN") {
			t.Fatal("AUTH not advertised without TLS although allowed")
		}
		r.authPlain("SMTP_Injection", e.key)
		wantLog(t, e, "WITHOUT TLS")
	}},
	{name: "implicit TLS", run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionsAddr().String(), true)
		ehlo := r.cmd(250, "EHLO client.test")
		if strings.Contains(ehlo, "STARTTLS") || !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
			t.Fatalf("EHLO on submissions: %q", ehlo)
		}
		for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SIZE 65536", "CHUNKING", "DSN"} {
			if !strings.Contains(ehlo, ext) {
				t.Errorf("EHLO lacks %s: %q", ext, ehlo)
			}
		}
		r.authPlain("SMTP_Injection", e.key)
		id := r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
		m := e.only(t)
		if m.ID != id || !strings.Contains(string(m.Body), "with ESMTPSA id "+id) {
			t.Fatalf("stored %s, body:\n%s", m.ID, m.Body)
		}
	}},
	{name: "AUTH PLAIN without initial response", run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.startTLS(e.pair.Client())
		r.cmd(334, "AUTH PLAIN")
		r.cmd(235, "%s", b64("\x00SMTP_Injection\x00"+e.key))
	}},
	{name: "AUTH LOGIN", run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.startTLS(e.pair.Client())
		if got := r.cmd(334, "AUTH LOGIN"); got != b64("Username:") {
			t.Fatalf("LOGIN challenge %q", got)
		}
		if got := r.cmd(334, "%s", b64("SMTP_Injection")); got != b64("Password:") {
			t.Fatalf("LOGIN challenge %q", got)
		}
		r.cmd(235, "%s", b64(e.key))
		// With the username as initial response, and a wrong key.
		r2 := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r2.cmd(250, "EHLO client.test")
		r2.startTLS(e.pair.Client())
		r2.cmd(334, "AUTH LOGIN %s", b64("SMTP_Injection"))
		if msg := r2.cmd(535, "%s", b64("0000000000000000000000000000000000000000")); !strings.HasPrefix(msg, "5.7.8 ") {
			t.Fatalf("LOGIN with wrong key: %q", msg)
		}
	}},
	{name: "malformed AUTH", run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.startTLS(e.pair.Client())
		r.cmd(501, "AUTH PLAIN %s", b64("no-nul-separators"))
		r.cmd(504, "AUTH CRAM-MD5")
	}},
	{name: "size parameter over limit", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		if msg := r.cmd(552, "MAIL FROM:<sender@example.com> SIZE=%d", 1<<20); !strings.HasPrefix(msg, "5.3.4 ") {
			t.Fatalf("SIZE over limit: %q", msg)
		}
		r.cmd(250, "MAIL FROM:<sender@example.com> SIZE=1000")
	}},
	{name: "message over limit", run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		big := message("sender@example.com") + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 2000)
		wantCode(t, send(c, "sender@example.com", []string{"rcpt@example.net"}, big), 552, "5.3.4")
		// The rest of the data was drained: the session goes on.
		if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
			t.Fatalf("message after an oversize one: %v", err)
		}
		if n := len(e.messages()); n != 1 {
			t.Fatalf("%d messages stored, want 1", n)
		}
	}},
	{name: "BDAT over limit", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		// Lines, as in mail: go-smtp discards a refused chunk through its
		// 2000-byte line limit.
		chunk := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 70<<10/64)
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk))
		if msg := r.expect(552); !strings.HasPrefix(msg, "5.3.4 ") {
			t.Fatalf("BDAT over limit: %q", msg)
		}
		r.cmd(250, "NOOP")
	}},
	{name: "line too long", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		r.cmd(354, "DATA")
		r.write("Subject: long\r\n\r\n" + strings.Repeat("x", 3000) + "\r\n.\r\n")
		if msg := r.expect(550); !strings.HasPrefix(msg, "5.6.0 ") {
			t.Fatalf("line too long: %q", msg)
		}
		if n := len(e.messages()); n != 0 {
			t.Fatalf("%d messages stored, want none", n)
		}
	}},
	{name: "too many recipients", run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		if err := c.Mail("sender@example.com"); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			if err := c.Rcpt(fmt.Sprintf("r%d@example.net", i)); err != nil {
				t.Fatalf("RCPT %d: %v", i, err)
			}
		}
		wantCode(t, c.Rcpt("r10@example.net"), 452, "4.5.3")
	}},
	{name: "bad address", run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		wantCode(t, c.Mail("sender@exa..mple.com"), 501, "5.1.3")
		if err := c.Mail("sender@example.com"); err != nil {
			t.Fatal(err)
		}
		wantCode(t, c.Rcpt("rcpt@-bad-.example"), 501, "5.1.3")
		wantCode(t, c.Rcpt("rcpt@[192.0.2.1]"), 501, "5.1.3")
		// Non-ASCII without SMTPUTF8 (which net/smtp always sends).
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		if msg := r.cmd(501, "RCPT TO:<rcpt@exämple.net>"); !strings.HasPrefix(msg, "5.1.3 ") {
			t.Fatalf("non-ASCII address without SMTPUTF8: %q", msg)
		}
	}},
	{name: "SMTPUTF8 address", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com> SMTPUTF8")
		r.cmd(250, "RCPT TO:<jösé@exämple.net>")
		id := r.data(message("sender@example.com"))
		m := e.only(t)
		if m.ID != id || !m.SMTPUTF8 || m.Recipients[0].Address != "jösé@exämple.net" || !strings.Contains(string(m.Body), "with UTF8SMTPSA id") {
			t.Fatalf("stored %+v", m)
		}
	}},
	{name: "invalid X-MSYS-API", run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		for _, h := range []string{`X-MSYS-API: {"tags": "not an array"}`, `X-MSYS-API: {not json`, `X-MSYS-API: {"campaign_id": "` + strings.Repeat("c", 65) + `"}`} {
			err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com", h))
			wantCode(t, err, 550, "5.6.0")
			if !strings.Contains(err.Error(), "Invalid X-MSYS-API header: ") {
				t.Errorf("reply %q does not say why", err)
			}
		}
		// cc/bcc/archive count against the recipient limit (10 here).
		var cc []string
		for i := range 10 {
			cc = append(cc, fmt.Sprintf(`"cc%d@example.org"`, i))
		}
		err := send(c, "sender@example.com", []string{"rcpt@example.net"},
			message("sender@example.com", `X-MSYS-API: {"cc": [`+strings.Join(cc, ",")+`]}`))
		wantCode(t, err, 550, "5.6.0")
		if n := len(e.messages()); n != 0 {
			t.Fatalf("%d messages stored, want none", n)
		}
	}},
	{name: "unconfigured sending domain", run: testSendingDomains},
	{name: "auth failures throttled", budget: 3, run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.startTLS(e.pair.Client())
		bad := b64("\x00SMTP_Injection\x00" + strings.Repeat("0", 40))
		r.cmd(535, "AUTH PLAIN %s", bad)
		r.cmd(535, "AUTH PLAIN %s", bad)
		if msg := r.cmd(421, "AUTH PLAIN %s", bad); msg != "4.7.0 Too many failed authentications, try later" {
			t.Fatalf("third failure: %q", msg)
		}
		if !r.closed() {
			t.Fatal("connection still open after 421")
		}
		// The address stays blocked, even with the right key.
		r2 := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r2.cmd(250, "EHLO client.test")
		r2.startTLS(e.pair.Client())
		r2.cmd(421, "AUTH PLAIN %s", b64("\x00SMTP_Injection\x00"+e.key))
		if !r2.closed() {
			t.Fatal("connection still open after 421")
		}
	}},
	{name: "subaccount username", run: testSubaccounts},
	{name: "per-key rate limit", mod: func(c *Config) { c.KeyRateLimit, c.KeyRateBurst = 0.001, 2 }, run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		for range 2 {
			if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
				t.Fatal(err)
			}
		}
		// The limit is per key, not per session.
		wantCode(t, e.dialAuth("SMTP_Injection", e.key).Mail("sender@example.com"), 451, "4.7.1")
		other, _ := e.newKey(auth.CreateParams{Label: "other", Grants: []string{"smtp/inject"}})
		if err := e.dialAuth("SMTP_Injection", other).Mail("sender@example.com"); err != nil {
			t.Fatalf("another key: %v", err)
		}
	}},
	{name: "store down during AUTH", run: func(t *testing.T, e *testEnv) {
		if err := e.st.Close(); err != nil {
			t.Fatal(err)
		}
		wantCode(t, e.dialTLS().Auth(smtp.PlainAuth("", "SMTP_Injection", e.key, "127.0.0.1")), 454, "4.7.0")
	}},
	{name: "store down during DATA", run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		if err := e.st.Close(); err != nil {
			t.Fatal(err)
		}
		err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
		wantCode(t, err, 451, "4.3.0")
		st := storetest.OpenURL(t, e.url, e.dataDir)
		if n := len(listMessages(t, st)); n != 0 {
			t.Fatalf("%d messages stored after 451, want none", n)
		}
	}},
	{name: "concurrent sessions", run: func(t *testing.T, e *testEnv) {
		const sessions, each = 20, 3
		var wg sync.WaitGroup
		errs := make(chan error, sessions*each)
		for i := range sessions {
			wg.Go(func() {
				c, err := smtp.Dial(e.srv.SubmissionAddr().String())
				if err != nil {
					errs <- err
					return
				}
				defer func() { _ = c.Close() }()
				if err := c.StartTLS(e.pair.Client()); err != nil {
					errs <- err
					return
				}
				if err := c.Auth(smtp.PlainAuth("", "SMTP_Injection", e.key, "127.0.0.1")); err != nil {
					errs <- err
					return
				}
				for j := range each {
					to := fmt.Sprintf("r%d-%d@example.net", i, j)
					if err := send(c, "sender@example.com", []string{to}, message("sender@example.com")); err != nil {
						errs <- fmt.Errorf("session %d message %d: %w", i, j, err)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		msgs := e.messages()
		if len(msgs) != sessions*each {
			t.Fatalf("%d messages stored, want %d", len(msgs), sessions*each)
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			seen[m.Recipients[0].Address] = true
		}
		if len(seen) != sessions*each {
			t.Fatalf("%d distinct recipients stored, want %d", len(seen), sessions*each)
		}
		if got := testutil.ToFloat64(e.srv.metrics.queued); got != sessions*each {
			t.Fatalf("queued metric %v, want %d", got, sessions*each)
		}
	}},
	{name: "BDAT", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com> BODY=8BITMIME")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		part1 := "From: <sender@example.com>\r\nSubject: chunks\r\n\r\nfirst "
		part2 := "and second part\r\n.\r\n"
		r.write(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
		r.expect(250)
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
		id := queuedID(t, r.expect(250))
		m := e.only(t)
		if m.ID != id || m.BodyType != "8BITMIME" || !strings.HasSuffix(string(m.Body), "\r\n\r\nfirst and second part\r\n.\r\n") {
			t.Fatalf("stored %s (%s):\n%s", m.ID, m.BodyType, m.Body)
		}
	}},
	{name: "SMTP smuggling", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		r.cmd(354, "DATA")
		smuggled := "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: evil@example.com\r\n\r\nevil\r\n"
		r.write("From: <sender@example.com>\r\nSubject: s\r\n\r\nbody\n.\n" + smuggled + "also\r\n.\nstill body\r\n.\r\n")
		queuedID(t, r.expect(250))
		// Had "\n.\n" or "\r\n.\n" ended DATA, the smuggled commands would
		// have been answered before this NOOP.
		if msg := r.cmd(250, "NOOP"); !strings.Contains(msg, "nothing") {
			t.Fatalf("NOOP answered %q: smuggled commands were executed", msg)
		}
		m := e.only(t)
		if len(m.Recipients) != 1 || !strings.Contains(string(m.Body), "MAIL FROM:<evil@example.com>") || !strings.Contains(string(m.Body), "still body") {
			t.Fatalf("stored %d recipients, body:\n%s", len(m.Recipients), m.Body)
		}
		if strings.Contains(strings.ReplaceAll(string(m.Body), "\r\n", ""), "\n") {
			t.Fatal("stored body has bare LF")
		}
	}},
	{name: "metrics", run: func(t *testing.T, e *testEnv) {
		c := e.dialAuth("SMTP_Injection", e.key)
		if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
			t.Fatal(err)
		}
		wantCode(t, c.Rcpt("x@example.net"), 502, "5.5.1")
		m := e.srv.metrics
		checks := map[string]float64{
			"auth success":  testutil.ToFloat64(m.auth.WithLabelValues("success")),
			"DATA 250":      testutil.ToFloat64(m.replies.WithLabelValues("DATA", "250", "2.0.0")),
			"queued":        testutil.ToFloat64(m.queued),
			"connections":   testutil.ToFloat64(m.connections.WithLabelValues("submission")),
			"enqueue count": float64(testutil.CollectAndCount(m.enqueue)),
		}
		for name, got := range checks {
			if got != 1 {
				t.Errorf("%s = %v, want 1", name, got)
			}
		}
		if n, err := testutil.GatherAndCount(e.reg); err != nil || n == 0 {
			t.Fatalf("registry gathered %d metrics, %v", n, err)
		}
	}},
}

// testSuccess checks a message with DSN parameters and an X-MSYS-API
// header is stored as SPEC §4 says.
func testSuccess(t *testing.T, e *testEnv) {
	r := e.authedRaw()
	r.cmd(250, "MAIL FROM:<sender@example.com> RET=HDRS ENVID=env+2B42")
	r.cmd(250, "RCPT TO:<Rcpt@Example.NET> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Rcpt@Example.NET")
	msys := "X-MSYS-API: {\"campaign_id\": \"spring\", \"metadata\": {\"user\": 42},\r\n" +
		"\t\"tags\": [\"a\", \"b\"], \"cc\": [\"cc@Example.ORG\"], \"bcc\": [\"bcc@example.org\"],\r\n" +
		"  \"options\": {\"open_tracking\": true, \"ip_pool\": \"shared\"}, \"future\": 1}"
	id := r.data(message("sender@example.com", msys))

	m := e.only(t)
	if m.ID != id || m.KeyID != e.keyID || m.Subaccount != 0 || m.MailFrom != "sender@example.com" ||
		m.DSNRet != "HDRS" || m.DSNEnvID != "env+42" || m.CampaignID != "spring" {
		t.Fatalf("stored envelope %+v", m)
	}
	var x MsysAPI
	if err := json.Unmarshal(m.MsysAPI, &x); err != nil {
		t.Fatalf("stored MsysAPI %s: %v", m.MsysAPI, err)
	}
	if string(x.Metadata) != `{"user":42}` || strings.Join(x.Tags, ",") != "a,b" || x.Options == nil ||
		x.Options.OpenTracking == nil || !*x.Options.OpenTracking || x.Options.IPPool != "shared" {
		t.Fatalf("stored MsysAPI %s", m.MsysAPI)
	}
	want := []store.Recipient{
		{Address: "Rcpt@Example.NET", Domain: "example.net", DSNNotify: "SUCCESS,FAILURE", DSNOrcpt: "RFC822;Rcpt@Example.NET"},
		{Address: "cc@Example.ORG", Domain: "example.org"},
		{Address: "bcc@example.org", Domain: "example.org"},
	}
	if len(m.Recipients) != len(want) {
		t.Fatalf("%d recipients stored, want %d", len(m.Recipients), len(want))
	}
	byAddr := map[string]*store.Recipient{}
	for _, rc := range m.Recipients {
		byAddr[rc.Address] = rc
	}
	for _, w := range want {
		got := byAddr[w.Address]
		if got == nil || got.Domain != w.Domain || got.DSNNotify != w.DSNNotify || got.DSNOrcpt != w.DSNOrcpt || got.State != store.StateQueued {
			t.Errorf("recipient %s stored as %+v", w.Address, got)
		}
	}
	body := string(m.Body)
	for _, s := range []string{
		"Received: from client.test ([127.0.0.1])\r\n\tby gw.test (smtpgw) with ESMTPSA id " + id + "\r\n\t(TLS",
		"Message-ID: <" + id + "@gw.test>\r\n",
		"\r\nSubject: test\r\n",
		"\r\n\r\nHello.\r\n",
	} {
		if !strings.Contains(body, s) {
			t.Errorf("body lacks %q:\n%s", s, body)
		}
	}
	if !strings.HasPrefix(body, "Received: ") || !strings.Contains(body, "\r\nDate: ") {
		t.Errorf("body lacks Received: first or Date:\n%s", body)
	}
	if strings.Contains(strings.ToLower(body), "x-msys-api") || strings.Contains(body, "campaign_id") {
		t.Errorf("X-MSYS-API not removed:\n%s", body)
	}
	// With one envelope recipient the trace names it; not here (cc/bcc).
	if strings.Contains(body, "for <") {
		t.Errorf("Received: names a recipient of a multi-recipient message:\n%s", body)
	}
	evs, err := e.st.ListEvents(context.Background(), store.EventFilter{MessageID: id})
	if err != nil || len(evs) != 3 {
		t.Fatalf("injection events: %d, %v", len(evs), err)
	}
	// SparkPost's fields: From:, Subject:, client address, rcpt_type.
	types := map[string]string{}
	for _, ev := range evs {
		d := ev.Detail
		if d.MsgFrom != "sender@example.com" || d.FriendlyFrom != "sender@example.com" || d.Subject != "test" ||
			d.IPAddress != "127.0.0.1" || d.MsgSize != int64(len(m.Body)) {
			t.Errorf("injection event detail %+v", d)
		}
		types[ev.Recipient] = d.RcptType
	}
	if types["Rcpt@Example.NET"] != "to" || types["cc@Example.ORG"] != "cc" || types["bcc@example.org"] != "bcc" {
		t.Errorf("rcpt types %v", types)
	}
}

// testSendingDomains: with sending domains configured, From: must use one
// the sender may use.
func testSendingDomains(t *testing.T, e *testEnv) {
	ctx := context.Background()
	for _, d := range []*store.Domain{
		{Name: "example.com", Selector: "s1", Algorithm: "ed25519"},
		{Name: "sub7.example", Subaccount: 7, Selector: "s1", Algorithm: "ed25519"},
		{Name: "shared.example", Subaccount: 9, Shared: true, Selector: "s1", Algorithm: "ed25519"},
	} {
		if err := e.st.CreateDomain(ctx, d); err != nil {
			t.Fatalf("create domain: %v", err)
		}
	}
	subKey, subKeyID := e.newKey(auth.CreateParams{Label: "sub7", Grants: []string{"smtp/inject"}, Subaccount: 7})
	cases := []struct {
		key, from string
		ok        bool
	}{
		{e.key, "a@example.com", true},
		{e.key, "a@EXAMPLE.com", true},
		{e.key, "a@other.org", false},
		{e.key, "a@sub7.example", false}, // a subaccount's domain, master sender
		{e.key, "a@shared.example", true},
		{subKey, "a@sub7.example", true},
		{subKey, "a@shared.example", true},
		{subKey, "a@example.com", false}, // master domain, subaccount sender
		{e.key, "", false},               // no From: at all
	}
	for _, tc := range cases {
		c := e.dialAuth("SMTP_Injection", tc.key)
		msg := message(tc.from)
		if tc.from == "" {
			msg = "Subject: no from\r\n\r\nbody\r\n"
		}
		err := send(c, "bounce@example.com", []string{"rcpt@example.net"}, msg)
		if tc.ok {
			if err != nil {
				t.Errorf("From %q: %v", tc.from, err)
			}
			continue
		}
		wantCode(t, err, 550, "5.7.1")
		if tc.from != "" && !strings.Contains(err.Error(), "Unconfigured Sending Domain "+strings.ToLower(tc.from[2:])) {
			t.Errorf("From %q: reply %q", tc.from, err)
		}
	}
	if n := len(e.messages()); n != 5 {
		t.Fatalf("%d messages stored, want 5", n)
	}
	evs, err := e.st.ListEvents(ctx, store.EventFilter{Types: []string{store.EventPolicyRejection}})
	if err != nil || len(evs) != 4 {
		t.Fatalf("policy_rejection events: %d, %v", len(evs), err)
	}
	found := false
	for _, ev := range evs {
		if ev.KeyID == subKeyID && ev.Subaccount == 7 && ev.Recipient == "rcpt@example.net" && strings.HasPrefix(ev.Reply, "550 5.7.1 ") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no policy_rejection event for the subaccount key: %+v", evs)
	}
}

// testSubaccounts: SMTP_Injection:X-MSYS-SUBACCOUNT=N.
func testSubaccounts(t *testing.T, e *testEnv) {
	subKey, _ := e.newKey(auth.CreateParams{Label: "sub7", Grants: []string{"smtp/inject"}, Subaccount: 7})
	e.subaccount(5, store.SubaccountActive)
	e.subaccount(9, store.SubaccountSuspended)
	e.subaccount(10, store.SubaccountTerminated)
	suspendedKey, _ := e.newKey(auth.CreateParams{Label: "sub11", Grants: []string{"smtp/inject"}, Subaccount: 11})
	e.subaccount(11, store.SubaccountSuspended)
	cases := []struct {
		user, key string
		want      int64 // -1: 535
	}{
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=5", e.key, 5},
		{"smtp_injection:x-msys-subaccount=0", e.key, 0},
		{"SMTP_Injection", subKey, 7},
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=7", subKey, 7},
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=8", subKey, -1},
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=x", e.key, -1},
		{"Other:X-MSYS-SUBACCOUNT=5", e.key, -1},
		// A master key may act only for an existing, active subaccount.
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=6", e.key, -1},
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=9", e.key, -1},
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=10", e.key, -1},
		// A suspended subaccount's own key is refused.
		{"SMTP_Injection", suspendedKey, -1},
	}
	for i, tc := range cases {
		c := e.dialTLS()
		err := c.Auth(smtp.PlainAuth("", tc.user, tc.key, "127.0.0.1"))
		if tc.want < 0 {
			wantCode(t, err, 535, "5.7.8")
			continue
		}
		if err != nil {
			t.Fatalf("AUTH as %q: %v", tc.user, err)
		}
		to := fmt.Sprintf("case%d@example.net", i)
		if err := send(c, "sender@example.com", []string{to}, message("sender@example.com")); err != nil {
			t.Fatal(err)
		}
		for _, m := range e.messages() {
			if m.Recipients[0].Address == to && m.Subaccount != tc.want {
				t.Errorf("AUTH as %q: stored subaccount %d, want %d", tc.user, m.Subaccount, tc.want)
			}
		}
	}
}

// authedRaw returns a raw connection after STARTTLS and AUTH.
func (e *testEnv) authedRaw() *rawConn {
	e.t.Helper()
	r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
	r.cmd(250, "EHLO client.test")
	r.startTLS(e.pair.Client())
	r.authPlain("SMTP_Injection", e.key)
	return r
}

// data sends DATA and msg (dot-stuffed), and returns the queue id of the
// 250 reply.
func (r *rawConn) data(msg string) string {
	r.t.Helper()
	r.cmd(354, "DATA")
	w := r.tp.DotWriter()
	if _, err := w.Write([]byte(msg)); err != nil {
		r.t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		r.t.Fatal(err)
	}
	return queuedID(r.t, r.expect(250))
}

// sendMessage runs a whole transaction and returns the queue id.
func (r *rawConn) sendMessage(from string, to []string, msg string) string {
	r.t.Helper()
	r.cmd(250, "MAIL FROM:<%s>", from)
	for _, a := range to {
		r.cmd(250, "RCPT TO:<%s>", a)
	}
	return r.data(msg)
}

func queuedID(t testing.TB, msg string) string {
	t.Helper()
	m := queuedRe.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("reply %q is not 250 2.0.0 OK queued as <id>", msg)
	}
	return m[1]
}

// only returns the one message stored.
func (e *testEnv) only(t testing.TB) *store.Message {
	t.Helper()
	msgs := e.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	return msgs[0]
}

func wantLog(t testing.TB, e *testEnv, s string) {
	t.Helper()
	// The log line may be written just after the reply.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(e.logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", s, e.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
