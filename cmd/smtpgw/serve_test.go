package main

import (
	"log/slog"
	"testing"

	"github.com/smtpgw/smtpgw/config"
)

// TestMaxAuthFailuresZeroMeansNoLimit checks that smtp.max_auth_failures = 0,
// documented as "no limit", reaches the Verifier (which holds the budget of
// SMTP AUTH, the API and /metrics) as its "disabled" value (negative), not
// as its "default" (zero).
func TestMaxAuthFailuresZeroMeansNoLimit(t *testing.T) {
	for _, tt := range []struct{ in, want int }{{0, -1}, {1, 1}, {5, 5}} {
		cfg := config.Default()
		cfg.SMTP.MaxAuthFailures = tt.in
		if got := verifierConfig(cfg, slog.New(slog.DiscardHandler)).MaxFailures; got != tt.want {
			t.Errorf("smtp.max_auth_failures = %d gives the Verifier MaxFailures %d, want %d", tt.in, got, tt.want)
		}
		if got := authFailureLimit(tt.in); got != tt.want {
			t.Errorf("authFailureLimit(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
