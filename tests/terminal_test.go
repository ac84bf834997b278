package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestClientTextDoesNotReachTheTerminalRaw: a client puts terminal escape
// sequences, C1 controls and bidi overrides in its X-MSYS-API campaign_id;
// `smtpgw events` and `smtpgw queue list/show` show them escaped, --json
// stays JSON with the exact value, and the gateway's log has none of them.
func TestClientTextDoesNotReachTheTerminalRaw(t *testing.T) {
	t.Parallel()
	g := StartGateway(t, Options{Backend: "sqlite", TOML: relayNowhere})
	logsOnFailure(t, g)
	key := g.CreateKey()
	const campaign = "\x1b]0;pwned\x07\x1b[2J\x7f\u009b31m\u202eevil"
	msys, err := json.Marshal(map[string]string{"campaign_id": campaign})
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.DialStartTLS(g.Submission, g.Pair.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Auth(sasl.NewPlainClient("", "SMTP_Injection", key)); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("rcpt@example.net", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("From: app@example.com\r\nTo: rcpt@example.net\r\nX-MSYS-API: " + string(msys) +
		"\r\nSubject: hello\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	id := queuedAs.FindStringSubmatch(resp.StatusText)[1]

	raw := func(s string) bool {
		return strings.ContainsFunc(s, func(r rune) bool {
			return (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x202e
		})
	}
	for _, args := range [][]string{{"events"}, {"queue", "list"}, {"queue", "show", id}} {
		out := g.MustCLI(args...)
		if raw(out) {
			t.Errorf("smtpgw %s prints control characters raw:\n%q", strings.Join(args, " "), out)
		}
		if args[0] == "events" && !strings.Contains(out, `\x1b]0;pwned`) {
			t.Errorf("smtpgw events does not show the campaign id escaped:\n%s", out)
		}
	}
	var evs struct {
		Results []struct {
			CampaignID string `json:"campaign_id"`
		} `json:"results"`
	}
	out := g.MustCLI("events", "--json")
	if err := json.Unmarshal([]byte(out), &evs); err != nil {
		t.Fatalf("events --json is not JSON: %v\n%s", err, out)
	}
	if len(evs.Results) == 0 || evs.Results[0].CampaignID != campaign {
		t.Errorf("events --json does not carry the exact campaign id: %+v", evs.Results)
	}
	if raw(g.Logs()) {
		t.Errorf("the gateway log holds control characters raw")
	}
}
