package smtpd

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

// TestSuppressionList: over SMTP on both stores, a recipient suppressed
// for both types is refused at RCPT; one suppressed for one type is
// dropped at DATA when the message is of that type (X-MSYS-API
// options.transactional, default non-transactional); a message left with
// no recipient is refused; each refusal is a policy_rejection event.
func TestSuppressionList(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			e := setup(t, backend, nil)
			ctx := context.Background()
			svc := suppression.New(e.st, e.srv.supp)
			if err := svc.Upsert(ctx, 0, []suppression.Entry{
				{Recipient: "dead@example.net", Type: store.SuppressTransactional},
				{Recipient: "dead@example.net", Type: store.SuppressNonTransactional},
				{Recipient: "news-off@example.net", Type: store.SuppressNonTransactional},
				{Recipient: "cc-off@example.net", Type: store.SuppressTransactional},
			}); err != nil {
				t.Fatal(err)
			}

			c := e.dialAuth("SMTP_Injection", e.key)
			if err := c.Mail("sender@example.com"); err != nil {
				t.Fatal(err)
			}
			wantCode(t, c.Rcpt("Dead@Example.NET"), 550, "5.7.1")
			if err := c.Rcpt("ok@example.net"); err != nil {
				t.Fatal(err)
			}
			if err := c.Rcpt("news-off@example.net"); err != nil {
				t.Fatalf("a recipient suppressed for one type is accepted at RCPT: %v", err)
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte(message("sender@example.com", `X-MSYS-API: {"cc": ["cc-off@example.net"]}`))); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("a message with one deliverable recipient: %v", err)
			}
			ms := e.messages()
			if len(ms) != 1 {
				t.Fatalf("stored %d messages", len(ms))
			}
			var got []string
			for _, r := range ms[0].Recipients {
				got = append(got, r.Address)
			}
			// Non-transactional by default: news-off dropped; cc-off is
			// suppressed for transactional mail only, so it stays.
			if !slices.Equal(got, []string{"ok@example.net", "cc-off@example.net"}) {
				t.Errorf("stored recipients %v", got)
			}

			// A transactional message: news-off gets it, cc-off does not.
			c = e.dialAuth("SMTP_Injection", e.key)
			if err := send(c, "sender@example.com", []string{"news-off@example.net"},
				message("sender@example.com", `X-MSYS-API: {"options": {"transactional": true}, "bcc": ["cc-off@example.net"]}`)); err != nil {
				t.Fatalf("transactional message: %v", err)
			}
			// Every recipient suppressed: refused, nothing stored.
			err = send(c, "sender@example.com", []string{"news-off@example.net"}, message("sender@example.com"))
			wantCode(t, err, 550, "5.7.1")
			if n := len(e.messages()); n != 2 {
				t.Errorf("%d messages stored; want 2 (the refused one is not)", n)
			}

			evs, err := e.st.ListEvents(ctx, store.EventFilter{Types: []string{store.EventPolicyRejection}})
			if err != nil {
				t.Fatal(err)
			}
			var rejected []string
			for _, ev := range evs {
				rejected = append(rejected, ev.Recipient)
				if ev.KeyID != e.keyID {
					t.Errorf("event without the key: %+v", ev)
				}
			}
			slices.Sort(rejected)
			want := []string{"Dead@Example.NET", "cc-off@example.net", "news-off@example.net", "news-off@example.net"} // as the client wrote it
			if !slices.Equal(rejected, want) {
				t.Errorf("policy_rejection events for %v; want %v", rejected, want)
			}
		})
	}
}

// TestRequireVerifiedDomains: with RequireVerifiedDomains, a From: domain
// must be a sending domain whose DKIM record was verified.
func TestRequireVerifiedDomains(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", func(c *Config) { c.RequireVerifiedDomains = true })
	ctx := context.Background()
	for _, name := range []string{"verified.example", "unverified.example"} {
		if err := e.st.CreateDomain(ctx, &store.Domain{Name: name, Selector: "s1", Algorithm: "ed25519"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.st.SetDomainStatus(ctx, "verified.example", store.DomainStatus{OwnershipVerified: true,
		DKIMStatus: store.VerifyValid, SPFStatus: store.VerifyUnverified, VerifiedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c := e.dialAuth("SMTP_Injection", e.key)
	if err := send(c, "a@verified.example", []string{"r@example.net"}, message("a@verified.example")); err != nil {
		t.Fatalf("verified domain: %v", err)
	}
	wantCode(t, send(c, "a@unverified.example", []string{"r@example.net"}, message("a@unverified.example")), 550, "5.7.1")
	wantCode(t, send(c, "a@other.example", []string{"r@example.net"}, message("a@other.example")), 550, "5.7.1")
	wantLog(t, e, "Unverified Sending Domain unverified.example")
}
