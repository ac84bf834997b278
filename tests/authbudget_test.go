package tests

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestOneFailureBudgetForSMTPAndHTTP: wrong keys over SMTP AUTH and over
// the HTTP API spend one budget per client address (smtp.max_auth_failures):
// once it is spent, the API answers 429 with Retry-After and SMTP AUTH
// 421 4.7.0, even for the right key.
func TestOneFailureBudgetForSMTPAndHTTP(t *testing.T) {
	t.Parallel()
	g := StartGateway(t, Options{Backend: "sqlite", TOML: relayNowhere,
		Env: []string{"SMTPGW_SMTP_MAX_AUTH_FAILURES=3", "SMTPGW_SMTP_AUTH_FAILURE_WINDOW=10m"}})
	logsOnFailure(t, g)
	key := g.CreateKey("--grant", "smtp/inject", "--grant", "api_keys/manage")
	wrong := strings.Repeat("0", 40)

	api := func(k string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+g.HTTP+"/api/v1/api-keys", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", k)
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	smtpAuth := func(k string) error {
		t.Helper()
		c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		return c.Auth(sasl.NewPlainClient("", "SMTP_Injection", k))
	}
	code := func(err error) int {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se.Code
		}
		return 0
	}

	if c := code(smtpAuth(wrong)); c != 535 {
		t.Fatalf("wrong key over SMTP: %d, want 535", c)
	}
	if c, _ := api(wrong); c != http.StatusUnauthorized {
		t.Fatalf("wrong key over HTTP: %d, want 401", c)
	}
	if c := code(smtpAuth(wrong)); c != 421 && c != 535 {
		t.Fatalf("third wrong key over SMTP: %d, want 421 or 535", c)
	}
	// Three failures in all: both doors are shut, even for the right key.
	if c, after := api(key); c != http.StatusTooManyRequests || after == "" {
		t.Fatalf("right key over HTTP after 3 failures: %d (Retry-After %q), want 429 with Retry-After", c, after)
	}
	err := smtpAuth(key)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 421 || se.EnhancedCode != (smtp.EnhancedCode{4, 7, 0}) {
		t.Fatalf("right key over SMTP after 3 failures: %v, want 421 4.7.0", err)
	}
}
