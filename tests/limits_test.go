package tests

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/pgtest"
)

// printedKey is the key as keys create and keys rotate print it, on a
// line of its own.
var printedKey = regexp.MustCompile(`(?m)^\s+([0-9a-f]{40})$`)

// TestSendingLimitAcrossNodesAndRotation runs two gateways on one
// PostgreSQL schema: a key's hourly limit holds over both nodes (refused
// at MAIL with 451 4.7.1 naming it), and keys rotate gives a twin with the
// same limit while the old key keeps working during the overlap.
func TestSendingLimitAcrossNodesAndRotation(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	g1 := StartGateway(t, Options{Backend: "postgres", DatabaseURL: url, TOML: relayNowhere})
	g2 := StartGateway(t, Options{Backend: "postgres", DatabaseURL: url, TOML: relayNowhere})
	logsOnFailure(t, g1)
	logsOnFailure(t, g2)
	key, id := cliKey(t, g1, "limited", "--grant", "smtp/inject", "--limit", "5/h")

	accepted := 0
	var refusal error
	for i := range 12 {
		g := g1
		if i%2 == 1 {
			g = g2
		}
		err := submit(g, key, fmt.Sprintf("r%d@example.net", i))
		if err == nil {
			accepted++
			continue
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 7, 1}) {
			t.Fatalf("message %d: %v, want 451 4.7.1", i, err)
		}
		refusal = err
	}
	if accepted != 5 {
		t.Errorf("accepted %d messages over two nodes, want the limit, 5", accepted)
	}
	if refusal == nil || !strings.Contains(refusal.Error(), "5 messages per hour for this key") {
		t.Errorf("refusal %v does not name the limit", refusal)
	}
	if show := g2.MustCLI("keys", "show", id); !strings.Contains(show, "5 of 5 used, 0 remaining") {
		t.Errorf("keys show does not show the quota used up:\n%s", show)
	}

	// Rotation: the twin has its own quota under the same limit; the old
	// key still authenticates during the overlap (and is still over its
	// limit).
	out := g1.MustCLI("keys", "rotate", id, "--overlap", "1h")
	m := printedKey.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "keeps working until") {
		t.Fatalf("keys rotate output:\n%s", out)
	}
	if err := submit(g2, m[1], "new@example.net"); err != nil {
		t.Errorf("the new key: %v", err)
	}
	var se *smtp.SMTPError
	if err := submit(g1, key, "old@example.net"); !errors.As(err, &se) || se.Code != 451 {
		t.Errorf("the old key during the overlap: %v, want AUTH to pass and MAIL to get 451", err)
	}
	if logs := g1.Logs() + g2.Logs(); strings.Contains(logs, key) || strings.Contains(logs, m[1]) {
		t.Error("a key appears in a gateway's log")
	}
}
