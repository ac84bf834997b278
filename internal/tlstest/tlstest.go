// Package tlstest generates TLS certificates at test time, so that no private
// key is ever committed (chasquid testlib.GenerateCert, mox fakeCert).
//
// A Pair is a throw-away CA and a leaf certificate for "localhost",
// 127.0.0.1 and ::1, signed by it: servers use Server(), clients trust the CA
// through Client(), and tools that need files (the gateway binary, swaks)
// get PEM paths from Files().
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Pair is a test CA and a server certificate signed by it.
type Pair struct {
	// CertPEM is the leaf certificate followed by the CA certificate.
	CertPEM []byte
	// KeyPEM is the leaf's PKCS#8 private key.
	KeyPEM []byte
	// CAPEM is the CA certificate alone, for clients to trust.
	CAPEM []byte
	// Cert is CertPEM/KeyPEM parsed, ready for tls.Config.Certificates.
	Cert tls.Certificate
	// Pool holds the CA.
	Pool *x509.CertPool
}

// New generates a CA and a leaf for localhost, 127.0.0.1 and ::1, valid for
// one hour either side of now. It fails t on any error.
func New(t testing.TB) *Pair {
	t.Helper()
	p, err := Generate("localhost")
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return p
}

// Generate is New without a testing.TB, for benchmarks and fuzz setup.
// Extra DNS names may be given after the first.
func Generate(names ...string) (*Pair, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "smtpgw test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return nil, err
	}
	p := &Pair{
		CAPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	p.CertPEM = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), p.CAPEM...)
	if p.Cert, err = tls.X509KeyPair(p.CertPEM, p.KeyPEM); err != nil {
		return nil, err
	}
	p.Pool = x509.NewCertPool()
	p.Pool.AddCert(caCert)
	return p, nil
}

// Server returns a server configuration presenting the leaf, TLS 1.2 or later.
func (p *Pair) Server() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.Cert}, MinVersion: tls.VersionTLS12}
}

// Client returns a client configuration that trusts only the test CA.
func (p *Pair) Client() *tls.Config {
	return &tls.Config{RootCAs: p.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// Files writes cert.pem, key.pem and ca.pem into a new temporary directory
// of t and returns their paths.
func (p *Pair) Files(t testing.TB) (certFile, keyFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	caFile = filepath.Join(dir, "ca.pem")
	for path, data := range map[string][]byte{certFile: p.CertPEM, keyFile: p.KeyPEM, caFile: p.CAPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatalf("tlstest: write %s: %v", path, err)
		}
	}
	return certFile, keyFile, caFile
}
