package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// relayNowhere keeps accepted mail in the queue: the smarthost is a closed
// port, so every attempt defers (first retry after a minute).
const relayNowhere = `
[relay]
mode = "smarthost"
smarthost = "127.0.0.1:1"
smarthost_tls = "none"
`

// needTool fails the test when a client it drives is missing: a skipped
// interoperability test would silently test nothing.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: %v (install it: apt-get install -y swaks msmtp python3)", name, err)
	}
	return p
}

// run runs a client command with a deadline and returns its combined
// output.
func run(t *testing.T, stdin string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// redact hides the key in client output before it is shown.
func redact(out, key string) string {
	return strings.ReplaceAll(out, key, "<key>")
}

// findByRecipient returns the queued message that has rcpt, via the CLI.
func (g *Gateway) findByRecipient(rcpt string) QueuedMessage {
	g.t.Helper()
	out := g.MustCLI("queue", "list", "--json", "--limit", "1000")
	var res struct {
		Results []QueuedMessage `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		g.t.Fatalf("queue list --json: %v\n%s", err, out)
	}
	for _, m := range res.Results {
		for _, r := range m.Recipients {
			if r.Address == rcpt {
				return m
			}
		}
	}
	g.t.Fatalf("no queued message for %s:\n%s", rcpt, out)
	return QueuedMessage{}
}

// pythonClient is an smtplib session: STARTTLS verified against the test
// CA, AUTH with the mechanism given (the key comes from the environment,
// not argv), one message; it prints the DATA reply.
const pythonClient = `
import os, smtplib, ssl, sys
host, port, ca, mech, frm, to = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, int(port), local_hostname="python.test", timeout=30)
s.starttls(context=ctx)
s.ehlo("python.test")
s.user, s.password = "SMTP_Injection", os.environ["TEST_API_KEY"]
if mech == "PLAIN":
    code, resp = s.auth("PLAIN", s.auth_plain)
else:
    code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
print("auth", code)
code, resp = s.mail(frm)
assert code == 250, (code, resp)
code, resp = s.rcpt(to)
assert code == 250, (code, resp)
msg = "From: %s\r\nTo: %s\r\nSubject: smtplib %s\r\nX-MSYS-API: {\"campaign_id\": \"python\"}\r\n\r\nhello from smtplib\r\n" % (frm, to, mech)
code, resp = s.data(msg.encode())
print("data", code, resp.decode())
s.quit()
`

// TestSubmissionClients sends with swaks, python3's smtplib and msmtp, with
// AUTH PLAIN and LOGIN, to the real binary on SQLite and PostgreSQL, and
// finds each message in the queue as sent.
func TestSubmissionClients(t *testing.T) {
	t.Parallel()
	swaks, msmtp, python := needTool(t, "swaks"), needTool(t, "msmtp"), needTool(t, "python3")
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend, TOML: relayNowhere})
			key := g.CreateKey()
			host, port, ok := strings.Cut(g.Submission, ":")
			if !ok {
				t.Fatalf("submission address %q", g.Submission)
			}
			scriptPath := filepath.Join(t.TempDir(), "client.py")
			if err := os.WriteFile(scriptPath, []byte(pythonClient), 0o600); err != nil {
				t.Fatal(err)
			}

			for _, mech := range []string{"PLAIN", "LOGIN"} {
				lower := strings.ToLower(mech)

				// swaks: the DATA reply carries the queue id.
				to := "swaks-" + lower + "@example.net"
				// The key through swaks's environment (SWAKS_OPT_auth_password),
				// not its command line, as docs and README show.
				out, err := run(t, "", []string{"SWAKS_OPT_auth_password=" + key}, swaks, "--server", g.Submission, "--tls", "--tls-verify", "--tls-ca-path", g.CAFile,
					"--auth", mech, "--auth-user", "SMTP_Injection", "--helo", "swaks.test",
					"--from", "swaks@example.com", "--to", to, "--header", "Subject: swaks "+mech,
					"--add-header", `X-MSYS-API: {"campaign_id": "swaks", "tags": ["cli"]}`)
				if err != nil {
					t.Fatalf("swaks AUTH %s: %v\n%s", mech, err, redact(out, key))
				}
				m := queuedAs.FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("swaks AUTH %s: no \"queued as\" reply:\n%s", mech, redact(out, key))
				}
				checkQueued(t, g, g.Message(m[1]), "swaks@example.com", to)

				// python3 smtplib.
				to = "python-" + lower + "@example.net"
				out, err = run(t, "", []string{"TEST_API_KEY=" + key}, python, scriptPath, host, port, g.CAFile, mech, "python@example.com", to)
				if err != nil || !strings.Contains(out, "auth 235") || !strings.Contains(out, "data 250 2.0.0 OK queued as ") {
					t.Fatalf("python smtplib AUTH %s: %v\n%s", mech, err, redact(out, key))
				}
				m = queuedAs.FindStringSubmatch(out)
				checkQueued(t, g, g.Message(m[1]), "python@example.com", to)

				// msmtp, configured by file so the key is not on its command line.
				to = "msmtp-" + lower + "@example.net"
				cfg := filepath.Join(t.TempDir(), "msmtprc")
				conf := fmt.Sprintf("account default\nhost %s\nport %s\ndomain msmtp.test\ntls on\ntls_starttls on\ntls_trust_file %s\n"+
					"auth %s\nuser SMTP_Injection\npassword %s\nfrom msmtp@example.com\n", host, port, g.CAFile, lower, key)
				if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
					t.Fatal(err)
				}
				msg := "From: msmtp@example.com\r\nTo: " + to + "\r\nSubject: msmtp " + mech + "\r\n\r\nhello from msmtp\r\n"
				out, err = run(t, msg, nil, msmtp, "-C", cfg, to)
				if err != nil {
					t.Fatalf("msmtp AUTH %s: %v\n%s", mech, err, redact(out, key))
				}
				checkQueued(t, g, g.findByRecipient(to), "msmtp@example.com", to)
			}

			// A wrong key: swaks fails with 535, nothing is queued.
			out, err := run(t, "", nil, swaks, "--server", g.Submission, "--tls", "--tls-verify", "--tls-ca-path", g.CAFile,
				"--auth", "PLAIN", "--auth-user", "SMTP_Injection", "--auth-password", strings.Repeat("0", 40),
				"--from", "swaks@example.com", "--to", "nobody@example.net")
			if err == nil || !strings.Contains(out, "535 5.7.8") {
				t.Fatalf("swaks with a wrong key: %v\n%s", err, out)
			}
			if strings.Contains(g.Logs(), key) {
				t.Fatal("the key appears in the gateway's log")
			}
		})
	}
}

// checkQueued checks a queued message's envelope.
func checkQueued(t *testing.T, g *Gateway, m QueuedMessage, from, to string) {
	t.Helper()
	if m.MailFrom != from || len(m.Recipients) != 1 || m.Recipients[0].Address != to || m.KeyID == "" {
		t.Fatalf("queued message %+v, want from %s to %s", m, from, to)
	}
}

// TestKillAfter250 kills the gateway with SIGKILL while sessions are
// sending: every message that got its 250 before the kill is in the store
// after a restart (the 250 came after the commit).
func TestKillAfter250(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend, TOML: relayNowhere})
			key := g.CreateKey()

			const sessions, killAfter = 4, 20
			var (
				mu       sync.Mutex
				accepted []string
				count    atomic.Int32
				killed   = make(chan struct{})
				once     sync.Once
				wg       sync.WaitGroup
			)
			for i := range sessions {
				wg.Go(func() {
					c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
					if err != nil {
						t.Errorf("dial: %v", err)
						return
					}
					defer func() { _ = c.Close() }()
					if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
						t.Errorf("AUTH: %v", err)
						return
					}
					for j := 0; ; j++ {
						id, err := sendOne(c, fmt.Sprintf("s%d-%d@example.net", i, j))
						if err != nil {
							return // the kill cut the session
						}
						mu.Lock()
						accepted = append(accepted, id)
						mu.Unlock()
						if count.Add(1) == killAfter {
							once.Do(func() {
								g.Kill()
								close(killed)
							})
						}
					}
				})
			}
			select {
			case <-killed:
			case <-time.After(60 * time.Second):
				t.Fatal("not enough messages accepted within 60s")
			}
			wg.Wait()

			// Restart on the same store. A new Gateway rather than
			// g.Restart: the killed process's log reader may still be
			// draining into g.
			g2 := StartGateway(t, Options{Backend: backend, DataDir: g.DataDir, DatabaseURL: g.DatabaseURL, TOML: relayNowhere})
			mu.Lock()
			defer mu.Unlock()
			if len(accepted) < killAfter {
				t.Fatalf("only %d messages accepted", len(accepted))
			}
			for _, id := range accepted {
				if m := g2.Message(id); m.ID != id || len(m.Recipients) != 1 {
					t.Fatalf("message %s answered 250 before SIGKILL is not in the store after restart: %+v", id, m)
				}
			}
		})
	}
}

// sendOne sends one message on an authenticated client and returns its
// queue id.
func sendOne(c *smtp.Client, to string) (string, error) {
	if err := c.Mail("app@example.com", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte("From: app@example.com\r\nTo: " + to + "\r\nSubject: durability\r\n\r\n" + strings.Repeat("x", 1000) + "\r\n")); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	m := queuedAs.FindStringSubmatch(resp.StatusText)
	if m == nil {
		return "", fmt.Errorf("DATA reply %q", resp.StatusText)
	}
	return m[1], nil
}
