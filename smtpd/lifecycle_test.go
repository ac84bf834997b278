package smtpd

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/auth"
)

// TestShutdown: new MAIL is refused with 421 4.3.2, idle sessions are
// closed, a message under way is finished, then the server stops.
func TestShutdown(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", nil)
	busy := e.authedRaw()
	busy.cmd(250, "MAIL FROM:<sender@example.com>")
	busy.cmd(250, "RCPT TO:<rcpt@example.net>")
	idle := e.authedRaw()

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()
	if msg := idle.expect(421); msg != "4.3.2 Service shutting down" {
		t.Fatalf("idle session got %q", msg)
	}
	if !idle.closed() {
		t.Fatal("idle session still open")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a message under way", err)
	default:
	}
	id := busy.data(message("sender@example.com"))
	if msg := busy.cmd(421, "MAIL FROM:<sender@example.com>"); msg != "4.3.2 Service shutting down" {
		t.Fatalf("MAIL while draining: %q", msg)
	}
	if !busy.closed() {
		t.Fatal("session still open after 421")
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if e.only(t).ID != id {
		t.Fatal("message finished during shutdown not stored")
	}
	if _, err := net.DialTimeout("tcp", e.srv.SubmissionAddr().String(), time.Second); err == nil {
		t.Fatal("listener still accepting after Shutdown")
	}
}

// TestShutdownGrace: a session still busy when the grace period ends gets
// 421 4.3.2 and is closed.
func TestShutdownGrace(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", nil)
	r := e.authedRaw()
	r.cmd(250, "MAIL FROM:<sender@example.com>")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	e.shutDownEarly = true
	if err := e.srv.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown returned nil although a session had to be cut off")
	}
	if msg := r.expect(421); msg != "4.3.2 Service shutting down" {
		t.Fatalf("cut-off session got %q", msg)
	}
	if !r.closed() {
		t.Fatal("cut-off session still open")
	}
}

// TestMaxConnections: connections over the limit get 421 4.7.0.
func TestMaxConnections(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", func(c *Config) { c.MaxConnections = 1 })
	first := e.dialRaw(e.srv.SubmissionAddr().String(), false)
	first.cmd(250, "EHLO client.test")
	for _, implicit := range []bool{false, true} {
		addr := e.srv.SubmissionAddr().String()
		if implicit {
			addr = e.srv.SubmissionsAddr().String()
		}
		r := &rawConn{t: t}
		var err error
		if implicit {
			r.nc, err = tlsDial(addr, e)
		} else {
			r.nc, err = net.Dial("tcp", addr)
		}
		if err != nil {
			t.Fatal(err)
		}
		r.tp = newTextproto(r.nc)
		if msg := r.expect(421); msg != "4.7.0 Too many connections, try later" {
			t.Fatalf("connection over the limit got %q", msg)
		}
		_ = r.nc.Close()
	}
	first.cmd(221, "QUIT")
	// Once the first is gone, a new connection is served.
	deadline := time.Now().Add(5 * time.Second)
	for {
		nc, err := net.Dial("tcp", e.srv.SubmissionAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		r := &rawConn{t: t, nc: nc, tp: newTextproto(nc)}
		code, _, _ := r.reply()
		_ = nc.Close()
		if code == 220 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused after the first connection closed: %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestProxyProtocol: a trusted balancer's PROXY header gives the client
// address (checked against the key's allowed IPs and written in
// Received:); anyone else's PROXY line is refused.
func TestProxyProtocol(t *testing.T) {
	t.Parallel()
	trusted := setup(t, "sqlite", func(c *Config) {
		c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	key, _ := trusted.newKey(auth.CreateParams{Label: "behind lb", Grants: []string{"smtp/inject"}, AllowedIPs: []string{"203.0.113.0/24"}})
	nc, err := net.Dial("tcp", trusted.srv.SubmissionAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }()
	if _, err := fmt.Fprintf(nc, "PROXY TCP4 203.0.113.9 127.0.0.1 40000 587\r\n"); err != nil {
		t.Fatal(err)
	}
	r := &rawConn{t: t, nc: nc, tp: newTextproto(nc)}
	r.expect(220)
	r.cmd(250, "EHLO client.test")
	r.startTLS(trusted.pair.Client())
	r.authPlain("SMTP_Injection", key)
	id := r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
	if m := trusted.only(t); m.ID != id || !strings.Contains(string(m.Body), "Received: from client.test ([203.0.113.9])") {
		t.Fatalf("stored body:\n%s", m.Body)
	}

	untrusted := setup(t, "sqlite", func(c *Config) {
		c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	})
	key, _ = untrusted.newKey(auth.CreateParams{Label: "behind lb", Grants: []string{"smtp/inject"}, AllowedIPs: []string{"203.0.113.0/24"}})
	r = untrusted.dialRaw(untrusted.srv.SubmissionAddr().String(), false)
	r.send("PROXY TCP4 203.0.113.9 127.0.0.1 40000 587")
	if code, msg, _ := r.reply(); code/100 != 5 {
		t.Fatalf("PROXY from an untrusted peer answered %d %s", code, msg)
	}
	r.cmd(250, "EHLO client.test")
	r.startTLS(untrusted.pair.Client())
	r.cmd(535, "AUTH PLAIN %s", b64("\x00SMTP_Injection\x00"+key))
}

// TestIdleTimeout: a silent session is closed with 421 4.4.2, while a slow
// but steady DATA transfer longer than the idle timeout in all goes
// through (the deadline moves with every read).
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", func(c *Config) { c.IdleTimeout = 400 * time.Millisecond })
	silent := e.dialRaw(e.srv.SubmissionAddr().String(), false)
	if msg := silent.expect(421); !strings.HasPrefix(msg, "4.4.2 ") {
		t.Fatalf("idle session got %q", msg)
	}

	r := e.authedRaw()
	r.cmd(250, "MAIL FROM:<sender@example.com>")
	r.cmd(250, "RCPT TO:<rcpt@example.net>")
	r.cmd(354, "DATA")
	r.write("From: <sender@example.com>\r\nSubject: slow\r\n\r\n")
	start := time.Now()
	for time.Since(start) < 1200*time.Millisecond {
		r.write("a line of a slow message\r\n")
		time.Sleep(100 * time.Millisecond)
	}
	r.write(".\r\n")
	queuedID(t, r.expect(250))
}
