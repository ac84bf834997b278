package smtpd

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// TestReloadLimits: Reload applies the per-key rate limit and the
// connection limit to new sessions, and refuses a certificate that does
// not load without changing anything.
func TestReloadLimits(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", func(c *Config) { c.KeyRateLimit, c.KeyRateBurst = 0.001, 1 })
	c := e.dialAuth("SMTP_Injection", e.key)
	if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, c.Mail("sender@example.com"), 451, "4.7.1")

	next := e.srv.cfg
	next.KeyRateLimit, next.KeyRateBurst = 0, 0 // no limit
	next.TLSCert = e.srv.cfg.TLSCert + ".missing"
	if err := e.srv.Reload(next); err == nil {
		t.Fatal("Reload with a missing certificate succeeded")
	}
	c2 := e.dialAuth("SMTP_Injection", e.key)
	wantCode(t, c2.Mail("sender@example.com"), 451, "4.7.1")
	_ = c.Close()
	_ = c2.Close()
	for len(e.srv.snapshotConns()) > 0 { // the server sees both closes
		time.Sleep(10 * time.Millisecond)
	}

	next.TLSCert = e.srv.cfg.TLSCert
	next.MaxConnections = 1
	if err := e.srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	held := e.dialAuth("SMTP_Injection", e.key) // one open connection
	if err := send(held, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
		t.Fatalf("after lifting the rate limit: %v", err)
	}
	nc, err := net.Dial("tcp", e.srv.SubmissionAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	if line, _ := bufio.NewReader(nc).ReadString('\n'); !strings.HasPrefix(line, "421 4.7.0") {
		t.Errorf("a second connection over max_connections 1 got %q, want 421 4.7.0", line)
	}
}
