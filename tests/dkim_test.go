package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// captureBackend is a go-smtp server that keeps every message it receives:
// the relay target of tests that look at what the gateway sent.
type captureBackend struct {
	mu   sync.Mutex
	msgs [][]byte
	got  chan struct{}
}

func (b *captureBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &captureSession{b: b}, nil
}

type captureSession struct{ b *captureBackend }

func (s *captureSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *captureSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *captureSession) Reset()                               {}
func (s *captureSession) Logout() error                        { return nil }
func (s *captureSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, b)
	s.b.mu.Unlock()
	select {
	case s.b.got <- struct{}{}:
	default:
	}
	return nil
}

// startCapture starts a capturing SMTP server on loopback.
func startCapture(t *testing.T) (*captureBackend, string) {
	t.Helper()
	b := &captureBackend{got: make(chan struct{}, 1)}
	srv := smtp.NewServer(b)
	srv.Domain = "target.test"
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b, l.Addr().String()
}

// wait returns the first captured message, failing after timeout.
func (b *captureBackend) wait(t *testing.T, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.After(timeout)
	for {
		b.mu.Lock()
		if len(b.msgs) > 0 {
			m := b.msgs[0]
			b.mu.Unlock()
			return m
		}
		b.mu.Unlock()
		select {
		case <-b.got:
		case <-deadline:
			t.Fatalf("no message reached the relay target within %s", timeout)
		}
	}
}

var txtRecord = regexp.MustCompile(`(?m)^(\S+)\. IN TXT \( (.*) \)$`)

// TestDKIMWithPrintedRecord is what an admin does: `domains add`, publish
// the printed TXT record, send mail from the domain, and have the receiver
// verify the signature against that record.
func TestDKIMWithPrintedRecord(t *testing.T) {
	t.Parallel()
	for _, algo := range []string{"rsa", "ed25519"} {
		t.Run(algo, func(t *testing.T) {
			t.Parallel()
			target, addr := startCapture(t)
			g := StartGateway(t, Options{Backend: "sqlite", TOML: relayTOML(addr)})
			out := g.MustCLI("domains", "add", "example.com", "--algorithm", algo)
			m := txtRecord.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("domains add printed no TXT record:\n%s", out)
			}
			name, value := m[1], unquoteTXT(t, m[2])
			if name != "smtpgw._domainkey.example.com" {
				t.Errorf("record name = %q", name)
			}
			key := g.CreateKey()

			c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
				t.Fatal(err)
			}
			body := "From: News <news@example.com>\r\nTo: <reader@example.net>\r\nSubject: signed\r\n\r\nHello, signed world.\r\n"
			if err := c.SendMail("news@example.com", []string{"reader@example.net"}, strings.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			// A From: domain that is not a sending domain is now refused.
			err = c.SendMail("x@other.example", []string{"reader@example.net"},
				strings.NewReader("From: <x@other.example>\r\nSubject: no\r\n\r\nno\r\n"))
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
				t.Errorf("unconfigured From: domain: %v, want 550 5.7.1", err)
			}

			got := target.wait(t, 30*time.Second)
			verifications, err := dkim.VerifyWithOptions(bytes.NewReader(got), &dkim.VerifyOptions{
				LookupTXT: func(domain string) ([]string, error) {
					if domain != name {
						return nil, fmt.Errorf("no TXT record for %s", domain)
					}
					return []string{value}, nil
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "example.com" {
				t.Fatalf("DKIM verification = %+v\nmessage:\n%s", verifications, got)
			}
		})
	}
}

// unquoteTXT joins the quoted strings of a zone-file TXT value.
func unquoteTXT(t *testing.T, s string) string {
	t.Helper()
	var b strings.Builder
	for _, part := range regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).FindAllString(s, -1) {
		u, err := strconv.Unquote(part)
		if err != nil {
			t.Fatalf("TXT string %s: %v", part, err)
		}
		b.WriteString(u)
	}
	return b.String()
}
