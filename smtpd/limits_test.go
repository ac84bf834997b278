package smtpd

import (
	"context"
	"errors"
	"fmt"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
)

// TestSendingLimits: a key's and a subaccount's limits refuse MAIL with
// 451 4.7.1 naming the limit, before anything is accepted; a transaction
// that ends without a stored message gives its quota back.
func TestSendingLimits(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			e := setup(t, backend, nil)
			ctx := context.Background()
			if err := e.st.SetLimits(ctx, limits.KeyScope(e.keyID), store.Limits{PerHour: 2}); err != nil {
				t.Fatal(err)
			}
			c := e.dialAuth("SMTP_Injection", e.key)
			// A transaction reset before DATA does not use the quota.
			if err := c.Mail("sender@example.com"); err != nil {
				t.Fatal(err)
			}
			if err := c.Reset(); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
					t.Fatal(err)
				}
			}
			before := len(e.messages())
			err := c.Mail("sender@example.com")
			wantCode(t, err, 451, "4.7.1")
			var te *textproto.Error
			if errors.As(err, &te) && !strings.Contains(te.Msg, "2 messages per hour for this key") {
				t.Errorf("reply %q does not name the limit", te.Msg)
			}
			if n := len(e.messages()); n != before {
				t.Errorf("%d messages stored after the refusal, want %d", n, before)
			}
			if got := testutil.ToFloat64(e.srv.metrics.limited.WithLabelValues("key", "hour")); got != 1 {
				t.Errorf("smtpgw_smtp_limited_total{scope=key,window=hour} = %v, want 1", got)
			}
			// Another key is not limited by it; a subaccount's limit covers
			// all its keys, and a master key sending for it.
			if err := e.st.SetLimits(ctx, limits.SubaccountScope(7), store.Limits{PerDay: 1}); err != nil {
				t.Fatal(err)
			}
			subKey, _ := e.newKey(auth.CreateParams{Label: "sub7", Grants: []string{"smtp/inject"}, Subaccount: 7})
			if err := send(e.dialAuth("SMTP_Injection", subKey), "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
				t.Fatal(err)
			}
			other, _ := e.newKey(auth.CreateParams{Label: "other", Grants: []string{"smtp/inject"}})
			err = e.dialAuth("SMTP_Injection:X-MSYS-SUBACCOUNT=7", other).Mail("sender@example.com")
			wantCode(t, err, 451, "4.7.1")
			if errors.As(err, &te) && !strings.Contains(te.Msg, "per day for subaccount 7") {
				t.Errorf("reply %q does not name the subaccount limit", te.Msg)
			}
			if err := e.dialAuth("SMTP_Injection", other).Mail("sender@example.com"); err != nil {
				t.Errorf("the same key for the master account: %v", err)
			}
		})
	}
}

// TestExpiredKeyAuth: an expired key gets 535 5.7.8 like a revoked one,
// with the reason expired in the log and the metrics.
func TestExpiredKeyAuth(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", nil)
	key, id := e.newKey(auth.CreateParams{Label: "soon", Grants: []string{"smtp/inject"}, ExpiresAt: time.Now().Add(time.Hour)})
	k, err := e.st.GetKey(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	k.ExpiresAt = time.Now().Add(-time.Second)
	if err := e.st.UpdateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.dialTLS().Auth(smtp.PlainAuth("", "SMTP_Injection", key, "127.0.0.1")), 535, "5.7.8")
	if got := testutil.ToFloat64(e.srv.metrics.auth.WithLabelValues("expired_key")); got != 1 {
		t.Errorf("smtpgw_smtp_auth_total{outcome=expired_key} = %v, want 1", got)
	}
	if !strings.Contains(e.logs.String(), "expired key (key "+id) {
		t.Errorf("the log does not give the reason:\n%s", e.logs.String())
	}
	if strings.Contains(e.logs.String(), key) {
		t.Error("the key appears in the log")
	}
}

// flakyLimits fails the next GetLimits calls it is told to.
type flakyLimits struct {
	store.Store
	mu    sync.Mutex
	fails int
}

func (f *flakyLimits) GetLimits(ctx context.Context, sc store.LimitScope) (store.Limits, error) {
	f.mu.Lock()
	fail := f.fails > 0
	if fail {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		return store.Limits{}, fmt.Errorf("get limits: %w", store.ErrUnavailable)
	}
	return f.Store.GetLimits(ctx, sc)
}

// TestSendingLimitsRecheckedAtData: when MAIL cannot ask the store, the
// limit is checked again before the message is stored, and refused there.
func TestSendingLimitsRecheckedAtData(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", nil)
	flaky := &flakyLimits{Store: e.st}
	// A checker of our own over the flaky store, reading limits every time.
	e.srv.quota = limits.New(flaky, limits.Config{CacheTTL: time.Nanosecond})
	ctx := context.Background()
	if err := e.st.SetLimits(ctx, limits.KeyScope(e.keyID), store.Limits{PerHour: 1}); err != nil {
		t.Fatal(err)
	}
	c := e.dialAuth("SMTP_Injection", e.key)
	if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
		t.Fatal(err)
	}
	before := len(e.messages())
	flaky.mu.Lock()
	flaky.fails = 1
	flaky.mu.Unlock()
	err := send(c, "sender@example.com", []string{"rcpt2@example.net"}, message("sender@example.com"))
	wantCode(t, err, 451, "4.7.1")
	if n := len(e.messages()); n != before {
		t.Errorf("%d messages stored, want %d: the message over the limit was stored", n, before)
	}
	if !strings.Contains(e.logs.String(), "checking again before storing") {
		t.Errorf("the failed check at MAIL is not logged:\n%s", e.logs.String())
	}
}
