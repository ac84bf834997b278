package smtpd

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// errBadAddress is the cause behind every 501 5.1.3.
var errBadAddress = errors.New("bad address syntax")

// parseMailbox checks addr, a mailbox as go-smtp hands it over (angle
// brackets stripped, a quoted local part already unquoted), against RFC 5321
// §4.1.2 and returns it in the form to relay: the local part re-quoted when
// it is not a dot-string. Non-ASCII is accepted only when utf8OK (the
// transaction has SMTPUTF8, RFC 6531). Address literals ([192.0.2.1]) are
// refused: relay routes by domain.
func parseMailbox(addr string, utf8OK bool) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return "", errBadAddress
	}
	local, domain := addr[:at], addr[at+1:]
	if !utf8.ValidString(addr) || (!utf8OK && !isASCII(addr)) {
		return "", errBadAddress
	}
	if len(local) > 64 || !validDomain(domain) {
		return "", errBadAddress
	}
	if isDotString(local) {
		return addr, nil
	}
	// RFC 5321 Quoted-string: printable characters and space, with " and \
	// escaped.
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range local {
		if r < ' ' || r == 0x7f {
			return "", errBadAddress
		}
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String() + "@" + domain, nil
}

// domainOf returns the lowercased domain of a mailbox parseMailbox accepted.
func domainOf(addr string) string {
	return strings.ToLower(addr[strings.LastIndexByte(addr, '@')+1:])
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// isDotString reports whether s is an RFC 5321 Dot-string (atoms of atext
// separated by single dots), non-ASCII counting as atext (RFC 6531).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r == '.' || r >= utf8.RuneSelf {
			continue
		}
		if !isAtext(byte(r)) {
			return false
		}
	}
	return true
}

// isAtext: RFC 5322 §3.2.3.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// validDomain checks an RFC 5321 Domain: dot-separated labels of letters,
// digits and hyphens, not starting or ending with a hyphen, at most 63
// octets each and 255 in all. Non-ASCII labels (U-labels) are let through
// for SMTPUTF8; the caller has checked the address is valid UTF-8.
func validDomain(d string) bool {
	if d == "" || len(d) > 255 {
		return false
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= utf8.RuneSelf || c == '-' ||
				'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
			if !ok {
				return false
			}
		}
	}
	return true
}
