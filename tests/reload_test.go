package tests

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/tlstest"
)

// writeConfig replaces the gateway's configuration file: the harness's
// settings with this certificate pair, and extra TOML.
func (g *Gateway) writeConfig(certFile, keyFile, extra string) {
	g.t.Helper()
	cfg := fmt.Sprintf(`hostname = "gw.test"
data_dir = %q

[database]
url = %q

[smtp]
submission_addr = "127.0.0.1:0"
tls_cert = %q
tls_key = %q
idle_timeout = "30s"
shutdown_grace = "5s"

[http]
addr = "127.0.0.1:0"
%s
`, g.DataDir, g.DatabaseURL, certFile, keyFile, extra)
	if err := os.WriteFile(g.cfgPath, []byte(cfg), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// hup sends SIGHUP and waits for the log line that ends the reload.
func (g *Gateway) hup(want string) {
	g.t.Helper()
	before := strings.Count(g.Logs(), want)
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		g.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(g.Logs(), want) == before {
		if time.Now().After(deadline) {
			g.t.Fatalf("no %q in the log after SIGHUP:\n%s", want, g.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-g.done:
		g.t.Fatalf("the gateway exited on SIGHUP:\n%s", g.Logs())
	default:
	}
}

// servedCert returns the certificate the gateway presents over STARTTLS
// to a client that trusts pair.
func servedCert(t *testing.T, addr string, pair *tlstest.Pair) ([]byte, error) {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, pair.Client())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Noop(); err != nil { // completes the handshake
		return nil, err
	}
	st, ok := c.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		return nil, fmt.Errorf("no TLS state")
	}
	return st.PeerCertificates[0].Raw, nil
}

// TestReloadOnSIGHUP: the gateway starts on hold; SIGHUP with a new
// certificate and a smarthost serves the new certificate over STARTTLS and
// delivers the held message; a bad configuration and a certificate that
// does not load are refused with the running ones kept; a certificate
// whose files change is picked up without a signal.
func TestReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	for _, backend := range Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			target, sink := startCapture(t)
			g := StartGateway(t, Options{Backend: backend})
			if !strings.Contains(g.Logs(), "RELAY IS ON HOLD") {
				t.Errorf("hold mode is not logged loudly at start:\n%s", g.Logs())
			}
			key := g.CreateKey()
			c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
				t.Fatal(err)
			}
			if err := c.SendMail("app@example.com", []string{"a@example.net"},
				strings.NewReader("From: app@example.com\r\nSubject: held\r\n\r\nhello\r\n")); err != nil {
				t.Fatal(err)
			}
			_ = c.Quit()
			if out := g.MustCLI("queue", "stats"); !strings.Contains(out, "HELD") || !strings.Contains(out, "queued     1") {
				t.Errorf("queue stats on hold:\n%s", out)
			}

			// SIGHUP: a new certificate and a smarthost.
			pair2 := tlstest.New(t)
			cert2, key2, _ := pair2.Files(t)
			relay := fmt.Sprintf("[relay]\nmode = \"smarthost\"\nsmarthost = %q\nsmarthost_tls = \"none\"\n", sink)
			g.writeConfig(cert2, key2, relay)
			g.hup("configuration reloaded")
			got, err := servedCert(t, g.Submission, pair2)
			if err != nil || !bytes.Equal(got, pair2.Cert.Certificate[0]) {
				t.Fatalf("after SIGHUP the new certificate is not served (%v)", err)
			}
			if msg := target.wait(t, 30*time.Second); !bytes.Contains(msg, []byte("Subject: held")) {
				t.Errorf("delivered %q, want the held message", msg)
			}

			// A configuration that does not parse, then a certificate that
			// does not load: refused in one line each, the old ones kept.
			if err := os.WriteFile(g.cfgPath, []byte("[smtp]\nsubmission_addr = 127.0.0.1:2525\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			g.hup("reload refused")
			g.writeConfig(cert2+".missing", key2, relay)
			g.hup("reload refused")
			for _, line := range strings.Split(g.Logs(), "\n") {
				if strings.Contains(line, "reload refused") && !strings.Contains(line, "must be quoted") && !strings.Contains(line, ".missing") {
					t.Errorf("refusal does not say what is wrong: %s", line)
				}
			}
			if got, err := servedCert(t, g.Submission, pair2); err != nil || !bytes.Equal(got, pair2.Cert.Certificate[0]) {
				t.Fatalf("after refused reloads the previous certificate is not served (%v)", err)
			}

			// Files rewritten in place (as an ACME client renews): picked up
			// without a signal, within the check interval.
			g.writeConfig(cert2, key2, relay)
			g.hup("configuration reloaded")
			pair3 := tlstest.New(t)
			if err := os.WriteFile(key2, pair3.KeyPEM, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cert2, pair3.CertPEM, 0o600); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(45 * time.Second)
			for {
				got, err := servedCert(t, g.Submission, pair3)
				if err == nil && bytes.Equal(got, pair3.Cert.Certificate[0]) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("renewed certificate files not picked up within 45s (%v):\n%s", err, g.Logs())
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
}
