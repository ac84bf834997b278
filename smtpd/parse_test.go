package smtpd

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/internal/tlstest"
)

func TestParseMailbox(t *testing.T) {
	t.Parallel()
	good := []struct {
		in, want string
		utf8     bool
	}{
		{"a@example.com", "a@example.com", false},
		{"First.Last+tag@Sub.Example.COM", "First.Last+tag@Sub.Example.COM", false},
		{"a@localhost", "a@localhost", false},
		{"a b@example.com", `"a b"@example.com`, false}, // go-smtp unquoted it
		{`a"b@example.com`, `"a\"b"@example.com`, false},
		{".a@example.com", `".a"@example.com`, false},
		{"jösé@exämple.net", "jösé@exämple.net", true},
		{"x@xn--mnchen-3ya.example", "x@xn--mnchen-3ya.example", false},
	}
	for _, tc := range good {
		got, err := parseMailbox(tc.in, tc.utf8)
		if err != nil || got != tc.want {
			t.Errorf("parseMailbox(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	bad := []struct {
		in   string
		utf8 bool
	}{
		{"", false},
		{"a", false},
		{"@example.com", false},
		{"a@", false},
		{"a@exa..mple.com", false},
		{"a@.example.com", false},
		{"a@example.com.", false},
		{"a@-x.example", false},
		{"a@x-.example", false},
		{"a@exa_mple.com", false},
		{"a@[192.0.2.1]", false},
		{"a@[IPv6:2001:db8::1]", false},
		{"jösé@example.net", false},
		{"a@exämple.net", false},
		{"a\x00b@example.com", false},
		{"a\tb@example.com", false},
		{"\xff@example.com", true},
		{strings.Repeat("l", 65) + "@example.com", false},
		{"a@" + strings.Repeat("l", 64) + ".example", false},
	}
	for _, tc := range bad {
		if got, err := parseMailbox(tc.in, tc.utf8); !errors.Is(err, errBadAddress) {
			t.Errorf("parseMailbox(%q) = %q, %v; want errBadAddress", tc.in, got, err)
		}
	}
}

func TestParseUsername(t *testing.T) {
	t.Parallel()
	def := []string{"smtp_injection"}
	good := []struct {
		in      string
		allowed []string
		sub     int64
	}{
		{"SMTP_Injection", def, -1},
		{"smtp_INJECTION", def, -1},
		{"SMTP_Injection:X-MSYS-SUBACCOUNT=12", def, 12},
		{"SMTP_Injection:x-msys-subaccount=0", def, 0},
		{"anything", nil, -1},
		{"anything:X-MSYS-SUBACCOUNT=3", nil, 3},
	}
	for _, tc := range good {
		sub, err := parseUsername(tc.in, tc.allowed)
		if err != nil || sub != tc.sub {
			t.Errorf("parseUsername(%q) = %d, %v; want %d", tc.in, sub, err, tc.sub)
		}
	}
	for _, in := range []string{"", "other", "SMTP_Injection:X-MSYS-SUBACCOUNT=", "SMTP_Injection:X-MSYS-SUBACCOUNT=-1",
		"SMTP_Injection:X-MSYS-SUBACCOUNT=+1", "SMTP_Injection:X-MSYS-SUBACCOUNT=1x", ":X-MSYS-SUBACCOUNT=1", "SMTP_Injection2"} {
		if sub, err := parseUsername(in, def); !errors.Is(err, errBadUsername) {
			t.Errorf("parseUsername(%q) = %d, %v; want errBadUsername", in, sub, err)
		}
	}
}

func TestPrepareMessage(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tr := traceInfo{helo: "client (evil)", ip: netip.MustParseAddr("2001:db8::7"), hostname: "gw.test", protocol: "ESMTPSA",
		id: "abc", recipient: "r@example.net", now: now}

	// Existing Message-ID and Date are kept; bare LF becomes CRLF; the
	// folded X-MSYS-API header goes; everything else is byte for byte.
	in := "Message-ID: <orig@example.com>\nDate: Thu, 1 Jan 2026 00:00:00 +0000\nX-MSYS-API: {\"campaign_id\":\n  \"c\"}\nFrom: \"A\" <a@Example.COM>\nX-Odd:   spaced  \n\nbody\n.line\nlast"
	p, err := prepareMessage([]byte(in), tr)
	if err != nil {
		t.Fatal(err)
	}
	want := "Received: from client__evil_ ([IPv6:2001:db8::7])\r\n\tby gw.test (smtpgw) with ESMTPSA id abc\r\n\tfor <r@example.net>; Fri, 02 Jan 2026 03:04:05 +0000\r\n" +
		"Message-ID: <orig@example.com>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nFrom: \"A\" <a@Example.COM>\r\nX-Odd:   spaced  \r\n\r\nbody\r\n.line\r\nlast\r\n"
	if string(p.body) != want {
		t.Fatalf("body:\n%q\nwant:\n%q", p.body, want)
	}
	if p.fromDomain != "example.com" || p.msys == nil || p.msys.CampaignID != "c" {
		t.Fatalf("fromDomain %q, msys %+v", p.fromDomain, p.msys)
	}

	// Missing Message-ID and Date are added.
	p, err = prepareMessage([]byte("Subject: s\r\n\r\nb\r\n"), tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"\r\nMessage-ID: <abc@gw.test>\r\n", "\r\nDate: Fri, 02 Jan 2026 03:04:05 +0000\r\n"} {
		if !strings.Contains(string(p.body), s) {
			t.Errorf("body lacks %q:\n%s", s, p.body)
		}
	}
	if p.fromDomain != "" || p.msys != nil {
		t.Errorf("fromDomain %q, msys %+v", p.fromDomain, p.msys)
	}

	for _, in := range []string{" leading space\r\n\r\n", "no colon here\r\n\r\nbody\r\n"} {
		if _, err := prepareMessage([]byte(in), tr); !errors.Is(err, ErrMalformedMessage) {
			t.Errorf("prepareMessage(%q) = %v, want ErrMalformedMessage", in, err)
		}
	}
	_, err = prepareMessage([]byte("X-MSYS-API: {}\r\nX-MSYS-API: {}\r\n\r\n"), tr)
	var me *MsysAPIError
	if !errors.As(err, &me) {
		t.Errorf("two X-MSYS-API headers: %v", err)
	}
}

func TestReply(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err  error
		code int
		enh  string
	}{
		{errors.New("driver: connection refused"), 451, "4.3.0"},
		{errBadAddress, 501, "5.1.3"},
		{&MsysAPIError{Why: "x"}, 550, "5.6.0"},
		{ErrAuthRequired, 530, "5.7.0"},
		{ErrTooBig, 552, "5.3.4"},
	}
	for _, tc := range cases {
		got, ok := reply(fmt.Errorf("wrapped: %w", tc.err)).(*smtp.SMTPError)
		if !ok {
			t.Fatalf("reply(%v) is not an *smtp.SMTPError", tc.err)
		}
		if line := replyLine(got); !strings.HasPrefix(line, fmt.Sprintf("%d %s ", tc.code, tc.enh)) {
			t.Errorf("reply(%v) = %q, want %d %s", tc.err, line, tc.code, tc.enh)
		}
	}
	if reply(nil) != nil {
		t.Error("reply(nil) is not nil")
	}
}

func TestLoadOrCreateCert(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	c1, err := LoadOrCreateCert("", "", dir, "mail.example.com", log)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.VerifyHostname("mail.example.com") != nil || leaf.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("generated certificate: names %v, algorithm %v", leaf.DNSNames, leaf.PublicKeyAlgorithm)
	}
	for _, name := range []string{"cert.pem", "key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, "tls", name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v", name, err, fi.Mode())
		}
	}
	// Reused on restart.
	c2, err := LoadOrCreateCert("", "", dir, "mail.example.com", log)
	if err != nil || string(c2.Certificate[0]) != string(c1.Certificate[0]) {
		t.Fatalf("certificate not reused: %v", err)
	}
	// Regenerated when expired: replace it with an expired one.
	pair := tlstest.New(t)
	expired := x509Expired(t)
	if err := os.WriteFile(filepath.Join(dir, "tls", "cert.pem"), expired.cert, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls", "key.pem"), expired.key, 0o600); err != nil {
		t.Fatal(err)
	}
	c3, err := LoadOrCreateCert("", "", dir, "mail.example.com", log)
	if err != nil {
		t.Fatal(err)
	}
	leaf3, _ := x509.ParseCertificate(c3.Certificate[0])
	if time.Until(leaf3.NotAfter) < 300*24*time.Hour {
		t.Fatalf("expired certificate not regenerated: valid until %v", leaf3.NotAfter)
	}
	// Configured files are loaded as they are.
	certFile, keyFile, _ := pair.Files(t)
	c4, err := LoadOrCreateCert(certFile, keyFile, "", "", log)
	if err != nil || string(c4.Certificate[0]) != string(pair.Cert.Certificate[0]) {
		t.Fatalf("configured certificate: %v", err)
	}
	if _, err := LoadOrCreateCert(certFile, "", dir, "", log); err == nil {
		t.Fatal("only tls_cert set: no error")
	}
	if _, err := LoadOrCreateCert(filepath.Join(dir, "missing.pem"), keyFile, dir, "", log); err == nil {
		t.Fatal("missing certificate file: no error")
	}
}

type pemPair struct{ cert, key []byte }

// x509Expired returns a self-signed certificate that expired yesterday.
func x509Expired(t *testing.T) pemPair {
	t.Helper()
	dir := t.TempDir()
	if _, err := writeSelfSigned(dir, filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), "mail.example.com"); err != nil {
		t.Fatal(err)
	}
	// Re-sign the generated key's certificate with dates in the past.
	keyPEM, err := os.ReadFile(filepath.Join(dir, "k.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer := key.(crypto.Signer)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour), DNSNames: []string{"mail.example.com"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return pemPair{cert: certPEM, key: keyPEM}
}

// preparedMessage is a message through the whole DATA path.
type preparedMessage struct {
	*prepared
	body []byte
}

// prepareMessage runs raw through what Data does to a message: msgReader
// into a spool (normalizing line ends), prepareHeader, and the header put
// in front of the body in place.
func prepareMessage(raw []byte, tr traceInfo) (*preparedMessage, error) {
	b := &budget{max: 1 << 30, gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "test"})}
	sp := newSpool(os.TempDir(), b, 0, 0)
	defer sp.release()
	mr := &msgReader{sp: sp, maxHeader: DefaultMaxHeaderBytes}
	hdrLen, err := mr.read(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	hdr, err := sp.head(hdrLen)
	if err != nil {
		return nil, err
	}
	p, err := prepareHeader(hdr, tr, DefaultMaxReceived)
	if err != nil {
		return nil, err
	}
	body, err := sp.message(p.header, hdrLen)
	if err != nil {
		return nil, err
	}
	return &preparedMessage{prepared: p, body: bytes.Clone(body)}, nil
}

// TestReceivedField: the Received: field for an IPv4 client over TLS with
// several recipients (no "for"), and for a client whose address is unknown.
func TestReceivedField(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		tr   traceInfo
		want string
	}{
		{traceInfo{helo: "mx.example", ip: netip.MustParseAddr("192.0.2.7"), hostname: "gw.test", protocol: "ESMTPSA",
			tls: "TLS1.3 TLS_AES_128_GCM_SHA256", id: "abc", now: now},
			"Received: from mx.example ([192.0.2.7])\r\n\tby gw.test (smtpgw) with ESMTPSA id abc\r\n" +
				"\t(TLS1.3 TLS_AES_128_GCM_SHA256)\r\n\t; Fri, 02 Jan 2026 03:04:05 +0000\r\n"},
		{traceInfo{hostname: "gw.test", protocol: "ESMTP", id: "abc", recipient: "r@x.test", now: now},
			"Received: from unknown ([invalid IP])\r\n\tby gw.test (smtpgw) with ESMTP id abc\r\n" +
				"\tfor <r@x.test>; Fri, 02 Jan 2026 03:04:05 +0000\r\n"},
	} {
		if got := string(appendReceived(nil, c.tr)); got != c.want {
			t.Errorf("Received:\n%q\nwant\n%q", got, c.want)
		}
	}
}
