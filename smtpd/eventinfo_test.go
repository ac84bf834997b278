package smtpd

import (
	"strings"
	"testing"
)

func TestDecodeSubject(t *testing.T) {
	for in, want := range map[string]string{
		"Hello":                            "Hello",
		"=?UTF-8?B?SMOpbGxv?= world":       "Héllo world",
		"=?ISO-8859-1?Q?caf=E9?=":          "café",
		"  spaced  ":                       "spaced",
		"=?bogus-charset?Q?x?=":            "=?bogus-charset?Q?x?=",
		strings.Repeat("a", maxSubject+10): strings.Repeat("a", maxSubject),
		"":                                 "",
	} {
		if got := decodeSubject(in); got != want {
			t.Errorf("decodeSubject(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFromAddress(t *testing.T) {
	for in, want := range map[string]string{
		"News <news@Example.com>":  "news@Example.com",
		"a@b.example, c@d.example": "a@b.example",
		"not an address":           "",
		"":                         "",
	} {
		if got := fromAddress(in); got != want {
			t.Errorf("fromAddress(%q) = %q, want %q", in, got, want)
		}
	}
	if d := domainOfFrom("news@Example.COM"); d != "example.com" {
		t.Errorf("domainOfFrom = %q", d)
	}
}

func TestMsysRcptType(t *testing.T) {
	m := &MsysAPI{Cc: []string{"c@x"}, Bcc: []string{"b1@x", "b2@x"}, Archive: []string{"a@x"}}
	for i, want := range []string{"cc", "bcc", "bcc", "archive"} {
		if got := m.rcptType(i); got != want {
			t.Errorf("rcptType(%d) = %q, want %q", i, got, want)
		}
	}
}
