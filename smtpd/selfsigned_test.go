package smtpd

import (
	"crypto/x509"
	"log/slog"
	"net"
	"testing"
)

// TestSelfSignedNames: the generated certificate verifies for localhost,
// the loopback addresses and hostname, and is made again when hostname
// changes.
func TestSelfSignedNames(t *testing.T) {
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
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	for _, name := range []string{"mail.example.com", "localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("a client trusting the certificate cannot verify %s: %v", name, err)
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				if err := leaf.VerifyHostname(n.IP.String()); err != nil {
					t.Errorf("interface address %s not covered: %v", n.IP, err)
				}
			}
		}
	}

	c2, err := LoadOrCreateCert("", "", dir, "other.example.com", log)
	if err != nil {
		t.Fatal(err)
	}
	leaf2, _ := x509.ParseCertificate(c2.Certificate[0])
	if leaf2.VerifyHostname("other.example.com") != nil || leaf2.VerifyHostname("mail.example.com") == nil {
		t.Errorf("after a hostname change the certificate names %v, want other.example.com only", leaf2.DNSNames)
	}
}
