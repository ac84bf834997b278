package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/smtpgw/smtpgw/store"
)

// dkimHeaders are the header fields signed when present, after RFC 6376
// §5.4.1. From is always signed.
var dkimHeaders = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
}

// GenerateDKIMKey generates a DKIM key pair: "rsa" (2048 bits) or "ed25519"
// (https://tools.ietf.org/html/rfc8463). It returns the private key as
// PKCS#8 PEM and the public key as published in the p= tag: base64 of the
// SubjectPublicKeyInfo for RSA, of the raw 32-byte key for Ed25519.
func GenerateDKIMKey(algorithm string) (privatePEM []byte, publicB64 string, err error) {
	var priv crypto.Signer
	var pub []byte
	switch strings.ToLower(algorithm) {
	case "rsa", "":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, "", fmt.Errorf("generate DKIM key: %w", err)
		}
		if pub, err = x509.MarshalPKIXPublicKey(&k.PublicKey); err != nil {
			return nil, "", fmt.Errorf("generate DKIM key: %w", err)
		}
		priv = k
	case "ed25519":
		p, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, "", fmt.Errorf("generate DKIM key: %w", err)
		}
		priv, pub = k, p
	default:
		return nil, "", fmt.Errorf("generate DKIM key: unknown algorithm %q: use \"rsa\" or \"ed25519\"", algorithm)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, "", fmt.Errorf("generate DKIM key: %w", err)
	}
	privatePEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return privatePEM, base64.StdEncoding.EncodeToString(pub), nil
}

// DKIMRecord returns the DNS TXT record to publish for d's DKIM key:
// "<selector>._domainkey.<domain>" and "v=DKIM1; k=rsa; p=<base64>".
func DKIMRecord(d *store.Domain) (name, value string) {
	k := strings.ToLower(d.Algorithm)
	if k == "" {
		k = "rsa"
	}
	return d.Selector + "._domainkey." + d.Name, "v=DKIM1; k=" + k + "; p=" + d.PublicKey
}

// parseDKIMKey parses a PKCS#8 PEM private key.
func parseDKIMKey(p []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(p)
	if b == nil {
		return nil, errors.New("no PEM block in private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		// Keys made by other tools are often PKCS#1.
		if rk, err1 := x509.ParsePKCS1PrivateKey(b.Bytes); err1 == nil {
			return rk, nil
		}
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key type %T cannot sign", k)
	}
	switch s.(type) {
	case *rsa.PrivateKey, ed25519.PrivateKey:
		return s, nil
	}
	return nil, fmt.Errorf("private key type %T is not RSA or Ed25519", k)
}

// domainCache caches sending domains and their parsed keys briefly, so each
// message does not cost a store lookup and a key parse.
type domainCache struct {
	st store.Store
	mu sync.Mutex
	m  map[string]domainEntry
}

type domainEntry struct {
	d       *store.Domain // nil: not a sending domain
	signer  crypto.Signer // nil: key unusable (logged once per entry)
	expires time.Time
}

const domainCacheTTL = 30 * time.Second

func newDomainCache(st store.Store) *domainCache {
	return &domainCache{st: st, m: make(map[string]domainEntry)}
}

// get returns the sending domain named name and its signer (both nil when
// it is not one). A store failure other than not-found is returned.
func (c *domainCache) get(ctx context.Context, name string) (domainEntry, bool, error) {
	c.mu.Lock()
	e, ok := c.m[name]
	c.mu.Unlock()
	if ok && time.Now().Before(e.expires) {
		return e, false, nil
	}
	d, err := c.st.GetDomain(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		d = nil
	case err != nil:
		return domainEntry{}, false, fmt.Errorf("get sending domain %s: %w", name, err)
	}
	e = domainEntry{d: d, expires: time.Now().Add(domainCacheTTL)}
	var keyErr error
	if d != nil {
		e.signer, keyErr = parseDKIMKey(d.PrivateKey)
	}
	c.mu.Lock()
	if len(c.m) > 10000 {
		clear(c.m)
	}
	c.m[name] = e
	c.mu.Unlock()
	return e, keyErr != nil, keyErr
}

// sign prepends a DKIM-Signature to body when the domain of its From:
// header is a sending domain. A message without a parsable From: is sent
// unsigned; a store failure is returned (the attempt is deferred); a broken
// key is logged and the message sent unsigned.
//
// from, if not empty, is the first address of the From: header as the
// SMTP server parsed it (store.MessageInfo.FriendlyFrom): when its domain
// is not a sending domain with a key, the message goes unsigned without
// its header being parsed again.
func (r *Relay) sign(ctx context.Context, body []byte, from string) ([]byte, error) {
	if from != "" {
		e, badKey, err := r.domains.get(ctx, domainOf(from))
		if err == nil && !badKey && (e.d == nil || e.signer == nil) {
			return body, nil
		}
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		return body, nil
	}
	dom := fromDomain(h.Get("From"))
	if dom == "" {
		return body, nil
	}
	e, badKey, err := r.domains.get(ctx, dom)
	if badKey {
		r.log.Error("sending domain has an unusable DKIM key; sending unsigned", "domain", dom, "err", err)
		return body, nil
	}
	if err != nil {
		return nil, err
	}
	if e.d == nil || e.signer == nil {
		return body, nil
	}
	var keys []string
	for _, k := range dkimHeaders {
		if h.Has(k) {
			keys = append(keys, k)
		}
	}
	opts := &dkim.SignOptions{
		Domain:                 e.d.Name,
		Selector:               e.d.Selector,
		Signer:                 e.signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             keys,
	}
	s, err := dkim.NewSigner(opts)
	if err != nil {
		r.log.Error("DKIM signer; sending unsigned", "domain", dom, "err", err)
		return body, nil
	}
	if _, err := s.Write(body); err != nil {
		_ = s.Close()
		r.log.Error("DKIM sign; sending unsigned", "domain", dom, "err", err)
		return body, nil
	}
	if err := s.Close(); err != nil {
		r.log.Error("DKIM sign; sending unsigned", "domain", dom, "err", err)
		return body, nil
	}
	sig := s.Signature()
	out := make([]byte, 0, len(sig)+len(body))
	out = append(out, sig...)
	return append(out, body...), nil
}

// fromDomain returns the lowercased domain of the first address in a From:
// header value, or "".
func fromDomain(v string) string {
	if v == "" {
		return ""
	}
	if list, err := mail.ParseAddressList(v); err == nil && len(list) > 0 {
		return domainOf(list[0].Address)
	}
	// Fall back to the text between the last '<' and '>', or the value.
	if i := strings.LastIndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j > 0 {
			return domainOf(strings.TrimSpace(v[i+1 : i+j]))
		}
	}
	return domainOf(strings.TrimSpace(v))
}
