package main

import (
	"fmt"
	"log/slog"
	"strings"
)

// Client text on the admin's terminal.
//
// Text from clients and the store (campaign ids, addresses, upstream
// replies, labels) reaches an admin's terminal through the CLI's tables
// and the gateway's logs. termSafe (every table and plain-text output)
// shows a string with any character that is not printable — C0 controls
// such as ESC, DEL, C1 controls, bidi overrides and other format
// characters — Go-quoted with escapes instead, so it cannot move the
// cursor, retitle the window or reorder what is shown. --json output stays
// JSON (encoding/json escapes control characters). Logs: slog's
// TextHandler quotes most such strings and its JSONHandler escapes C0
// controls, but neither touches DEL, and JSON leaves C1 and bidi controls
// as they are, so both get escapeLogAttr, below.

// logUnsafe reports whether r is a character JSON encoding leaves as it is
// but a terminal may act on: DEL, C1 controls and bidi controls.
func logUnsafe(r rune) bool {
	switch {
	case r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return false
}

// escapeLogText writes the characters of s that logUnsafe reports as
// \uXXXX (visible text, not JSON escapes).
func escapeLogText(s string) string {
	if !strings.ContainsFunc(s, logUnsafe) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if logUnsafe(r) {
			fmt.Fprintf(&b, `\u%04x`, r)
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// escapeLogAttr is the log handlers' ReplaceAttr: string and error
// values lose the characters a terminal showing the log would act on and
// the handler would leave (both escape or quote the C0 controls).
func escapeLogAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); strings.ContainsFunc(s, logUnsafe) {
			a.Value = slog.StringValue(escapeLogText(s))
		}
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			if s := err.Error(); strings.ContainsFunc(s, logUnsafe) {
				a.Value = slog.StringValue(escapeLogText(s))
			}
		}
	}
	return a
}
