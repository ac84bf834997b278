package smtpd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCertCheckInterval is how often configured certificate files are
// checked for a change when Config.CertCheckInterval is zero.
const DefaultCertCheckInterval = 10 * time.Second

// CertHolder serves the current certificate to TLS handshakes
// (tls.Config.GetCertificate) and replaces it when its files change or on
// Reload. Configured files are polled (size and modification time) rather
// than watched with inotify: an ACME client renews by writing new files
// and, like certbot, often by switching a symbolic link to a new
// directory; a stat follows the link every time, where a watch stays on
// the inode or directory it was set on. A stat per file every few seconds
// costs nothing.
type CertHolder struct {
	cur atomic.Pointer[tls.Certificate]
	log *slog.Logger

	mu                sync.Mutex
	certFile, keyFile string // configured files; "" for the self-signed certificate
	dataDir, hostname string
	stamp             string // size and mtime of the configured files when last loaded
	failedStamp       string // stamp of the files whose load failed, logged once
}

// NewCertHolder loads the certificate of these settings (see
// LoadOrCreateCert). The HTTP listener uses one too.
func NewCertHolder(certFile, keyFile, dataDir, hostname string, log *slog.Logger) (*CertHolder, error) {
	if log == nil {
		log = slog.Default()
	}
	h := &CertHolder{log: log}
	if err := h.Load(certFile, keyFile, dataDir, hostname); err != nil {
		return nil, err
	}
	return h, nil
}

// GetCertificate implements tls.Config.GetCertificate.
func (h *CertHolder) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return h.cur.Load(), nil
}

// Load loads the certificate of these settings and makes it current; on
// error nothing changes.
func (h *CertHolder) Load(certFile, keyFile, dataDir, hostname string) error {
	stamp := fileStamp(certFile, keyFile)
	cert, err := LoadOrCreateCert(certFile, keyFile, dataDir, hostname, h.log)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.certFile, h.keyFile, h.dataDir, h.hostname = certFile, keyFile, dataDir, hostname
	h.stamp, h.failedStamp = stamp, ""
	h.mu.Unlock()
	h.cur.Store(&cert)
	return nil
}

// check reloads the configured files if they changed since they were
// loaded. A pair that does not load (e.g. the certificate written, the
// key not yet) is logged once and the current certificate kept; the next
// change is tried again.
func (h *CertHolder) check() {
	h.mu.Lock()
	certFile, keyFile, stamp, failed := h.certFile, h.keyFile, h.stamp, h.failedStamp
	h.mu.Unlock()
	if certFile == "" {
		return
	}
	now := fileStamp(certFile, keyFile)
	if now == stamp || now == failed {
		return
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.certFile != certFile || h.keyFile != keyFile {
		return // a Reload changed the files meanwhile
	}
	if err != nil {
		h.failedStamp = now
		h.log.Error("TLS certificate files changed but do not load; still serving the previous certificate",
			"cert", certFile, "key", keyFile, "err", err)
		return
	}
	h.stamp, h.failedStamp = now, ""
	h.cur.Store(&cert)
	h.log.Info("TLS certificate reloaded (files changed)", "cert", certFile, "key", keyFile)
}

// Watch checks the configured files for a change every interval until
// stop is closed.
func (h *CertHolder) Watch(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			h.check()
		}
	}
}

// fileStamp identifies the current content of the files by size and
// modification time; "" for no files.
func fileStamp(files ...string) string {
	var s string
	for _, f := range files {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			s += "?" + f + ";"
			continue
		}
		s += fmt.Sprintf("%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return s
}

// Reload applies the settings of cfg that can change while the server
// runs: the TLS certificate (TLSCert and TLSKey are read again, even when
// unchanged; the self-signed certificate is regenerated if its names
// changed), KeyRateLimit, KeyRateBurst and MaxConnections. New sessions
// and handshakes use them at once; open sessions keep their TLS state. The
// other settings (listeners, Hostname, limits of a message, timeouts,
// AUTH settings, PROXY protocol) need a restart and are ignored. If the
// certificate does not load, Reload returns the error and changes nothing.
func (s *Server) Reload(cfg Config) error {
	if cfg.MaxConnections < 0 {
		return errors.New("reload smtp server: negative MaxConnections")
	}
	if err := s.certs.Load(cfg.TLSCert, cfg.TLSKey, cfg.DataDir, s.cfg.Hostname); err != nil {
		return fmt.Errorf("reload smtp server: %w", err)
	}
	s.limitsMu.Lock()
	defer s.limitsMu.Unlock()
	if cfg.KeyRateLimit != s.rateLimit || cfg.KeyRateBurst != s.rateBurst {
		s.rateLimit, s.rateBurst = cfg.KeyRateLimit, cfg.KeyRateBurst
		s.rates.Store(newKeyLimiter(cfg.KeyRateLimit, cfg.KeyRateBurst))
	}
	s.maxConns.Store(int64(cfg.MaxConnections))
	return nil
}
