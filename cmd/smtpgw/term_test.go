package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// hostile holds every kind of character a terminal acts on: C0 (ESC
// sequences, BEL, CR, LF, TAB), DEL, C1 (CSI, OSC) and bidi controls.
var hostile = []string{"\x1b[2J", "\x1b]0;pwned\x07", "a\rb", "a\nb", "a\tb", "\x7f", "\u009b31m", "\u009d0;t\u009c",
	"abc\u202edcba", "\u2066x\u2069", "\u200f", "\u061c"}

// terminalControls reports whether s holds a character a terminal acts on.
func terminalControls(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || logUnsafe(r) })
}

func TestTermSafe(t *testing.T) {
	for _, s := range hostile {
		got := termSafe(s)
		if terminalControls(got) {
			t.Errorf("termSafe(%q) = %q still holds control characters", s, got)
		}
		if got == s {
			t.Errorf("termSafe(%q) did not change it", s)
		}
	}
	for _, s := range []string{"camp-1", "Grüße €", "日本", "a b", "<a@b.c>"} {
		if got := termSafe(s); got != s {
			t.Errorf("termSafe(%q) = %q, want it unchanged", s, got)
		}
	}
}

// TestLogsEscapeControls: both log formats keep a client's control
// characters off the terminal, and JSON logs stay JSON.
func TestLogsEscapeControls(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var out bytes.Buffer
		log, err := newLogger("info", format, new(slog.LevelVar), env{stdout: &out, stderr: &out})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range hostile {
			out.Reset()
			log.Info("queued", "campaign_id", s, "err", errors.New("reply "+s))
			line := strings.TrimSuffix(out.String(), "\n")
			if terminalControls(line) || strings.Contains(line, "\n") {
				t.Errorf("%s log of %q holds control characters: %q", format, s, line)
			}
			if format == "json" {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Errorf("JSON log line of %q is not JSON: %v: %s", s, err, line)
				}
			}
		}
	}
}
