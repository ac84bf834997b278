package webhooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// Header names.
const (
	// BatchHeader names the batch, the same on every retry (SparkPost's).
	BatchHeader = "X-MessageSystems-Batch-ID"
	// SignatureHeader carries the HMAC-SHA256 signature (smtpgw's).
	SignatureHeader = "X-Smtpgw-Signature"
	userAgent       = "smtpgw-webhooks/1"
	// maxAnswer is how much of an answer is read (validate shows it).
	maxAnswer = 4096
)

// ErrForbiddenTarget is returned when a connection would go to a
// loopback, private, link-local or metadata address.
var ErrForbiddenTarget = errors.New("target address is not allowed (loopback, private, link-local or metadata; see webhooks.allow_private_targets)")

// Sign returns the X-Smtpgw-Signature value of body sent at t: "t=<unix
// seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with secret>". A
// receiver recomputes v1 from the raw body and t, compares in constant
// time, and refuses old t to stop replays.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a signature header value against body, accepting t within
// maxSkew of now. It is what a receiver written in Go would do.
func Verify(secret, header string, body []byte, now time.Time, maxSkew time.Duration) bool {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return false
	}
	if d := now.Sub(time.Unix(sec, 0)); d > maxSkew || d < -maxSkew {
		return false
	}
	want := Sign(secret, time.Unix(sec, 0), body)
	return hmac.Equal([]byte(want), []byte("t="+ts+",v1="+sig))
}

// forbidden lists ranges no webhook may reach unless private targets are
// allowed, beyond what netip's predicates cover.
var forbidden = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),  // CGNAT (RFC 6598)
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("fd00:ec2::/32"),  // AWS metadata (IPv6), also in fc00::/7
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	netip.MustParsePrefix("100::/64"),       // discard
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, metadata 169.254.169.254
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("::ffff:0:0/96"),  // mapped, checked unmapped below
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("255.255.255.255/32"),
}

// AllowedAddr reports whether a webhook may connect to ip when private
// targets are not allowed.
func AllowedAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return false
	}
	for _, p := range forbidden {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// guard is the net.Dialer Control that refuses forbidden addresses: it
// runs for every address a connection is attempted to, after DNS, so a
// name resolving to a private address is refused too.
func guard(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrForbiddenTarget, address)
	}
	if !AllowedAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrForbiddenTarget, ap.Addr())
	}
	return nil
}

// Sender POSTs batches: authentication, signature, timeout, SSRF guard.
type Sender struct {
	client *http.Client

	mu     sync.Mutex
	tokens map[string]token // OAuth 2 access tokens by webhook id
}

type token struct {
	value   string
	expires time.Time
}

// NewSender returns a Sender for cfg.
func NewSender(cfg Config) *Sender {
	cfg.defaults()
	d := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}
	if !cfg.AllowPrivateTargets {
		d.Control = guard
	}
	tr := &http.Transport{
		Proxy:                 nil, // never through an environment proxy: the guard checks the real peer
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
	}
	return &Sender{
		client: &http.Client{
			Transport: tr,
			Timeout:   cfg.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // a redirect is an answer, not a new target
			},
		},
		tokens: map[string]token{},
	}
}

// Result is the outcome of one POST.
type Result struct {
	Status  int         // HTTP status; 0 if there was no answer
	Headers http.Header // answer headers
	Body    string      // first 4 KiB of the answer
	Err     error       // no answer: connection, timeout, refused target, token
}

// OK reports a 2xx answer.
func (r Result) OK() bool { return r.Err == nil && r.Status >= 200 && r.Status < 300 }

// Summary says what happened in a few words.
func (r Result) Summary() string {
	if r.Err != nil {
		return r.Err.Error()
	}
	return "HTTP " + strconv.Itoa(r.Status)
}

// Post sends body to w's target as batch id. With OAuth 2 it gets a token
// first (cached until it expires) and, on a 401, a new token and one more
// try.
func (s *Sender) Post(ctx context.Context, w *store.Webhook, id string, body []byte) Result {
	res := s.post(ctx, w, id, body)
	if w.AuthType == AuthOAuth2 && res.Err == nil && res.Status == http.StatusUnauthorized {
		s.forgetToken(w.ID)
		res = s.post(ctx, w, id, body)
	}
	return res
}

func (s *Sender) post(ctx context.Context, w *store.Webhook, id string, body []byte) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.Target, bytes.NewReader(body))
	if err != nil {
		return Result{Err: fmt.Errorf("target: %w", err)}
	}
	var hdrs map[string]string
	if len(w.Headers) > 0 {
		if err := json.Unmarshal(w.Headers, &hdrs); err != nil {
			return Result{Err: fmt.Errorf("custom headers: %w", err)}
		}
	}
	for k, v := range hdrs {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(BatchHeader, id)
	if w.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(w.Secret, time.Now(), body))
	}
	var d authDetails
	if len(w.Auth) > 0 {
		if err := json.Unmarshal(w.Auth, &d); err != nil {
			return Result{Err: fmt.Errorf("auth details: %w", err)}
		}
	}
	switch w.AuthType {
	case AuthBasic:
		req.SetBasicAuth(d.Username, d.Password)
	case AuthOAuth2:
		tok, err := s.token(ctx, w.ID, d)
		if err != nil {
			return Result{Err: err}
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return Result{Err: cleanErr(err)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // reuse the connection
	return Result{Status: resp.StatusCode, Headers: resp.Header, Body: string(b)}
}

// cleanErr drops the URL from url.Error (it may carry a token in a query)
// and names a refused target plainly.
func cleanErr(err error) error {
	if errors.Is(err, ErrForbiddenTarget) {
		return ErrForbiddenTarget
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

// token returns a cached OAuth 2 access token for webhook id, or fetches
// one with the client credentials grant (RFC 6749 §4.4).
func (s *Sender) token(ctx context.Context, id string, d authDetails) (string, error) {
	s.mu.Lock()
	t, ok := s.tokens[id]
	s.mu.Unlock()
	if ok && time.Now().Before(t.expires) {
		return t.value, nil
	}
	form := url.Values{}
	for k, v := range d.Body {
		form.Set(k, v)
	}
	if form.Get("grant_type") == "" {
		form.Set("grant_type", "client_credentials")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("oauth2 token url: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	resp, err := s.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("oauth2 token request: %w", cleanErr(err))
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken string          `json:"access_token"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("oauth2 token request: HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&tr); err != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("oauth2 token request: no access_token in the answer")
	}
	life := time.Hour
	if n, err := strconv.Atoi(strings.Trim(string(tr.ExpiresIn), `"`)); err == nil && n > 0 {
		life = time.Duration(n) * time.Second
	}
	// Renew a little early, so a token does not expire in flight.
	t = token{value: tr.AccessToken, expires: time.Now().Add(life - min(life/10, 30*time.Second))}
	s.mu.Lock()
	s.tokens[id] = t
	s.mu.Unlock()
	return t.value, nil
}

func (s *Sender) forgetToken(id string) {
	s.mu.Lock()
	delete(s.tokens, id)
	s.mu.Unlock()
}
