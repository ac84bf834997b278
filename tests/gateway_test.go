package tests

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestFirstMessage follows the README: start the gateway, create a key with
// the CLI, send one message over STARTTLS with AUTH PLAIN, and find it in
// the queue with its recipients.
func TestFirstMessage(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			g := StartGateway(t, Options{Backend: backend})
			key := g.CreateKey()

			c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
				t.Fatalf("AUTH PLAIN: %v", err)
			}
			if err := c.Mail("app@example.com", nil); err != nil {
				t.Fatal(err)
			}
			for _, rcpt := range []string{"a@example.net", "b@example.org"} {
				if err := c.Rcpt(rcpt, nil); err != nil {
					t.Fatal(err)
				}
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte("From: app@example.com\r\nTo: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n")); err != nil {
				t.Fatal(err)
			}
			resp, err := w.CloseWithResponse()
			if err != nil {
				t.Fatal(err)
			}
			m := queuedAs.FindStringSubmatch(resp.StatusText)
			if m == nil {
				t.Fatalf("DATA reply = %q, want \"OK queued as <id>\"", resp.StatusText)
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}

			msg := g.Message(m[1])
			if msg.MailFrom != "app@example.com" || len(msg.Recipients) != 2 {
				t.Fatalf("stored message = %+v", msg)
			}
			got := []string{msg.Recipients[0].Address, msg.Recipients[1].Address}
			if !strings.Contains(strings.Join(got, ","), "a@example.net") || !strings.Contains(strings.Join(got, ","), "b@example.org") {
				t.Fatalf("recipients = %v", got)
			}
			if logs := g.Logs(); strings.Contains(logs, key) {
				t.Fatalf("the key appears in the gateway's log")
			}
		})
	}
}

// TestOneServePerSQLiteDataDir: a second `smtpgw serve` on the same SQLite
// data directory refuses to start, saying why, instead of running a second
// relay over the same queue.
func TestOneServePerSQLiteDataDir(t *testing.T) {
	t.Parallel()
	g := StartGateway(t, Options{Backend: "sqlite"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "serve", "--config", g.cfgPath)
	cmd.Env = g.environ()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "already using data_dir") {
		t.Fatalf("second serve: %v\n%s", err, out)
	}
}
