package smtpd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// selfSignedLifetime is how long a generated certificate is valid; it is
// regenerated at start once less than selfSignedRenew of it is left.
const (
	selfSignedLifetime = 365 * 24 * time.Hour
	selfSignedRenew    = 7 * 24 * time.Hour
)

// LoadOrCreateCert returns the certificate the listeners present.
//
// With certFile and keyFile set it loads that PEM pair. With both empty it
// uses a self-signed ECDSA P-256 certificate kept in dataDir/tls/cert.pem
// and key.pem (mode 0600) for the names clients use to reach this host
// ([SelfSignedNames]: hostname, localhost, and the addresses of the host's
// interfaces, loopback included, as IP SANs): reused across restarts, and
// generated when missing, unreadable, about to expire, or made for other
// names (hostname changed). A self-signed certificate is logged at WARN;
// clients verify it once given dataDir/tls/cert.pem as a trusted
// certificate.
func LoadOrCreateCert(certFile, keyFile, dataDir, hostname string, log *slog.Logger) (tls.Certificate, error) {
	if log == nil {
		log = slog.Default()
	}
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return tls.Certificate{}, errors.New("load TLS certificate: set both smtp.tls_cert and smtp.tls_key, or neither for a self-signed certificate")
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("load TLS certificate %s / %s: %w", certFile, keyFile, err)
		}
		return cert, nil
	}
	if dataDir == "" {
		return tls.Certificate{}, errors.New("self-signed TLS certificate: data_dir is empty (set data_dir, or smtp.tls_cert and smtp.tls_key)")
	}
	dir := filepath.Join(dataDir, "tls")
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	warn := func(what string) {
		log.Warn("TLS: using a self-signed certificate; clients verify it only when told to trust "+certFile+
			" (e.g. curl --cacert, swaks --tls-ca-path). For production set smtp.tls_cert and smtp.tls_key to a certificate for this host name (e.g. from Let's Encrypt)",
			"certificate", certFile, "hostname", hostname, "state", what)
	}
	dnsNames, ips := SelfSignedNames(hostname)
	if cert, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
		if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil && time.Until(leaf.NotAfter) > selfSignedRenew &&
			sameNames(leaf, dnsNames, ips) {
			warn("reused")
			return cert, nil
		}
	}
	cert, err := writeSelfSigned(dir, certFile, keyFile, hostname)
	if err != nil {
		return tls.Certificate{}, err
	}
	warn("generated")
	return cert, nil
}

// SelfSignedNames are the names the self-signed certificate covers: the
// DNS names hostname and localhost, and as IP addresses 127.0.0.1, ::1 and
// every address of the host's network interfaces (so any address a
// listener binds to, or a client dials, is covered). A hostname that is an
// IP address goes with the addresses.
func SelfSignedNames(hostname string) (dnsNames []string, ips []net.IP) {
	seenIP := map[string]bool{}
	addIP := func(ip net.IP) {
		if ip == nil || ip.IsUnspecified() || seenIP[ip.String()] {
			return
		}
		seenIP[ip.String()] = true
		ips = append(ips, ip)
	}
	if ip := net.ParseIP(hostname); ip != nil {
		addIP(ip)
	} else if hostname != "" && hostname != "localhost" {
		dnsNames = append(dnsNames, hostname)
	}
	dnsNames = append(dnsNames, "localhost")
	addIP(net.IPv4(127, 0, 0, 1))
	addIP(net.IPv6loopback)
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				addIP(n.IP)
			}
		}
	}
	return dnsNames, ips
}

// sameNames reports whether leaf was made for exactly these names.
func sameNames(leaf *x509.Certificate, dnsNames []string, ips []net.IP) bool {
	key := func(dns []string, ips []net.IP) string {
		var all []string
		for _, d := range dns {
			all = append(all, "dns:"+strings.ToLower(d))
		}
		for _, ip := range ips {
			all = append(all, "ip:"+ip.String())
		}
		slices.Sort(all)
		return strings.Join(slices.Compact(all), ",")
	}
	return key(leaf.DNSNames, leaf.IPAddresses) == key(dnsNames, ips)
}

func writeSelfSigned(dir, certFile, keyFile, hostname string) (tls.Certificate, error) {
	dnsNames, ips := SelfSignedNames(hostname)
	if hostname == "" {
		hostname = "localhost"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate TLS serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname, Organization: []string{"smtpgw self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	tmpl.DNSNames, tmpl.IPAddresses = dnsNames, ips
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create self-signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("encode TLS key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("create TLS directory: %w", err)
	}
	// Key first: a crash between the two renames leaves a pair that does not
	// match, which the next start detects (LoadX509KeyPair fails) and
	// regenerates.
	if err := writeFileAtomic(keyFile, keyPEM); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(certFile, certPEM); err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load generated certificate: %w", err)
	}
	return cert, nil
}

// writeFileAtomic writes data to path with mode 0600 through a temporary
// file and a rename, so a reader never sees half a file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(name, path)
	}
	if werr != nil {
		_ = os.Remove(name)
		return fmt.Errorf("write %s: %w", path, werr)
	}
	return nil
}
