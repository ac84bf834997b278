package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/net/idna"
)

// idleTimeout is how long an unused connection stays open for the next
// message to the same host.
const idleTimeout = 5 * time.Second

// route is one host to try for a job.
type route struct {
	host string // host name (no trailing dot) or IP, for TLS and logs
	addr string // host:port to dial
	tls  string // TLSStartTLS, TLSImplicit, TLSNone, or "may" (opportunistic)
	key  string // connection pool key
	// smarthost is the configuration the smarthost route was made from
	// (nil for an MX host): its credentials and TLS settings, and, in
	// key, its identity, so a connection made before a Reload is never
	// reused after it.
	smarthost *Config
}

// tlsMay is opportunistic STARTTLS: used when offered, certificate not
// verified, plain text if the handshake fails.
const tlsMay = "may"

// newResolver returns the resolver for MX and address lookups: the system's,
// or the pure-Go one talking to server when it is set.
func newResolver(server string) *net.Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}
}

// routes returns the hosts to try for domain, in order. A
// *permanentError means the recipients bounce.
func (r *Relay) routes(ctx context.Context, domain string) ([]route, error) {
	switch cfg := r.conf(); cfg.Mode {
	case ModeSmarthost:
		host, _, _ := net.SplitHostPort(cfg.Smarthost)
		return []route{{host: host, addr: cfg.Smarthost, tls: cfg.SmarthostTLS,
			key: fmt.Sprintf("smarthost@%p", cfg), smarthost: cfg}}, nil
	case ModeHold:
		// Claimed just before a reload put the relay on hold.
		return nil, &tempError{reply: "451 4.3.2 relay on hold (relay.mode = \"hold\")", err: errors.New("relay on hold")}
	}
	if rts, err, ok := r.mx.get(domain); ok {
		return rts, err
	}
	rts, err := r.lookupRoutes(ctx, domain)
	var pe *permanentError
	if err == nil || errors.As(err, &pe) {
		r.mx.put(domain, rts, err)
	}
	return rts, err
}

// lookupRoutes resolves domain's MX hosts, sorted by preference, falling
// back to the domain itself when it has no MX but an address
// (https://tools.ietf.org/html/rfc5321#section-5.1).
func (r *Relay) lookupRoutes(ctx context.Context, domain string) ([]route, error) {
	if domain == "" {
		return nil, &permanentError{reply: "550 5.1.3 recipient address has no domain"}
	}
	port := strconv.Itoa(r.conf().MXPort)
	if lit, ok := strings.CutPrefix(domain, "["); ok {
		// An address literal names the host itself
		// (https://tools.ietf.org/html/rfc5321#section-4.1.3).
		ip, err := netip.ParseAddr(strings.TrimPrefix(strings.TrimSuffix(lit, "]"), "ipv6:"))
		if err != nil {
			return nil, &permanentError{reply: "550 5.1.2 bad address literal " + domain}
		}
		addr := net.JoinHostPort(ip.String(), port)
		return []route{{host: ip.String(), addr: addr, tls: tlsMay, key: "mx:" + addr}}, nil
	}
	ascii, err := idna.Lookup.ToASCII(strings.TrimSuffix(domain, "."))
	if err != nil {
		return nil, &permanentError{reply: "550 5.1.2 bad domain name " + domain}
	}
	lctx, cancel := context.WithTimeout(ctx, r.conf().ConnectTimeout)
	defer cancel()
	fqdn := ascii + "."
	mxs, err := r.resolver.LookupMX(lctx, fqdn)
	var dnsErr *net.DNSError
	switch {
	case err == nil && len(mxs) > 0:
		sort.SliceStable(mxs, func(a, b int) bool { return mxs[a].Pref < mxs[b].Pref })
		if len(mxs) == 1 && mxs[0].Host == "." {
			// https://tools.ietf.org/html/rfc7505#section-3
			return nil, &permanentError{reply: replyNullMX}
		}
		var rts []route
		for _, mx := range mxs {
			h := strings.TrimSuffix(mx.Host, ".")
			if h == "" {
				continue
			}
			addr := net.JoinHostPort(h, port)
			rts = append(rts, route{host: h, addr: addr, tls: tlsMay, key: "mx:" + addr})
		}
		if len(rts) == 0 {
			return nil, &permanentError{reply: replyNullMX}
		}
		return rts, nil
	case err == nil, errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		// No MX records: the domain is its own mail host if it has an address.
		ips, err := r.resolver.LookupIPAddr(lctx, fqdn)
		if err == nil && len(ips) > 0 {
			addr := net.JoinHostPort(ascii, port)
			return []route{{host: ascii, addr: addr, tls: tlsMay, key: "mx:" + addr}}, nil
		}
		if err == nil || errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return nil, &permanentError{reply: replyNoDomain}
		}
		return nil, &tempError{reply: "451 4.4.3 address lookup for " + domain + " failed", err: err}
	default:
		return nil, &tempError{reply: "451 4.4.3 MX lookup for " + domain + " failed", err: err}
	}
}

// mxCache keeps routes (and permanent failures) per domain for a minute, so
// a burst of mail to one domain does not query DNS per message.
type mxCache struct {
	mu sync.Mutex
	m  map[string]mxEntry
}

type mxEntry struct {
	routes  []route
	err     error
	expires time.Time
}

const mxCacheTTL = time.Minute

func newMXCache() *mxCache { return &mxCache{m: make(map[string]mxEntry)} }

func (c *mxCache) get(domain string) ([]route, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[domain]
	if !ok || time.Now().After(e.expires) {
		return nil, nil, false
	}
	return e.routes, e.err, true
}

func (c *mxCache) put(domain string, rts []route, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if len(c.m) > 10000 {
		for k, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
	}
	c.m[domain] = mxEntry{routes: rts, err: err, expires: now.Add(mxCacheTTL)}
}

// conn is an SMTP client connection ready for MAIL.
type conn struct {
	client *smtp.Client
	nc     net.Conn // the connection go-smtp uses, for deadlines and abort
	host   string
	// local is our IP address on this connection: events report it as
	// sending_ip.
	local string
	ext   map[string]bool // extensions offered after the final EHLO
	idle  time.Time       // when it went back to the pool
	// rd reads the replies of pipelined groups (pipeline.go); nil until
	// the first.
	rd *textproto.Reader
}

// has reports whether the server offered extension ext (upper case).
func (c *conn) has(ext string) bool { return c.ext[ext] }

// close ends the connection: QUIT when it is healthy, then close.
func (c *conn) close() {
	_ = c.nc.SetDeadline(time.Now().Add(2 * time.Second))
	if err := c.client.Quit(); err != nil {
		_ = c.client.Close()
	}
}

// connect returns an idle pooled connection for rt, or dials one.
func (r *Relay) connect(ctx context.Context, rt route) (*conn, bool, error) {
	if c := r.pool.get(rt.key); c != nil {
		return c, true, nil
	}
	c, err := r.dial(ctx, rt)
	return c, false, err
}

// dial connects to rt and leaves the connection ready for MAIL: greeting,
// EHLO, STARTTLS as rt.tls says, AUTH for an authenticated smarthost.
func (r *Relay) dial(ctx context.Context, rt route) (*conn, error) {
	c, err := r.dialTLS(ctx, rt, rt.tls)
	if err != nil && rt.tls == tlsMay && errors.Is(err, errTLSHandshake) {
		// Opportunistic TLS failed: deliver in plain text rather than not
		// at all, as Postfix's "may" level does.
		r.log.Info("STARTTLS handshake failed; retrying without TLS", "host", rt.host, "err", err)
		c, err = r.dialTLS(ctx, rt, TLSNone)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", rt.host, err)
	}
	return c, nil
}

// errTLSHandshake marks a failed TLS handshake after STARTTLS.
var errTLSHandshake = errors.New("tls handshake failed")

// dialTLS dials rt with the given TLS mode.
func (r *Relay) dialTLS(ctx context.Context, rt route, mode string) (_ *conn, err error) {
	d := net.Dialer{Timeout: r.conf().ConnectTimeout, Resolver: r.resolver}
	raw, err := d.DialContext(ctx, "tcp", rt.addr)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = raw.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	tlsCfg := r.tlsConfig(rt)
	var nc net.Conn = raw
	switch mode {
	case TLSImplicit:
		tc := tls.Client(raw, tlsCfg)
		hctx, cancel := context.WithTimeout(ctx, r.conf().ConnectTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errTLSHandshake, err)
		}
		nc = tc
	case TLSStartTLS, tlsMay:
		nc, err = r.startTLS(raw, tlsCfg, mode == TLSStartTLS)
		if err != nil {
			return nil, err
		}
	}
	nc = newFlushConn(nc)
	client := smtp.NewClient(nc)
	client.CommandTimeout = r.conf().CommandTimeout
	client.SubmissionTimeout = r.conf().CommandTimeout
	if err := client.Hello(r.conf().Hostname); err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	c := &conn{client: client, nc: nc, host: rt.host, local: localIP(raw), ext: make(map[string]bool)}
	for _, ext := range []string{"SMTPUTF8", "DSN", "8BITMIME", "SIZE", "PIPELINING", "CHUNKING", "AUTH"} {
		if ok, _ := client.Extension(ext); ok {
			c.ext[ext] = true
		}
	}
	if sh := rt.smarthost; sh != nil && sh.SmarthostUsername != "" {
		if !c.has("AUTH") {
			return nil, errors.New("smarthost does not offer AUTH (check relay.smarthost_tls: AUTH usually needs TLS)")
		}
		_, mechs := client.Extension("AUTH")
		mech, sc := smarthostAuth(mechs, sh.SmarthostUsername, sh.SmarthostPassword)
		if sc == nil {
			return nil, fmt.Errorf("smarthost offers AUTH %s but neither PLAIN nor LOGIN", mechs)
		}
		if err := client.Auth(sc); err != nil {
			return nil, fmt.Errorf("AUTH %s: %w", mech, err)
		}
	}
	return c, nil
}

// smarthostAuth picks the SASL mechanism for the smarthost from those it
// offers (the AUTH keyword's parameter): PLAIN, else LOGIN. A server that
// lists none gets PLAIN. It returns nil if neither is offered.
func smarthostAuth(offered, user, pass string) (string, sasl.Client) {
	mechs := strings.Fields(strings.ToUpper(offered))
	switch {
	case len(mechs) == 0 || slices.Contains(mechs, sasl.Plain):
		return sasl.Plain, sasl.NewPlainClient("", user, pass)
	case slices.Contains(mechs, sasl.Login):
		return sasl.Login, &loginClient{user: user, pass: pass}
	}
	return "", nil
}

// loginClient is the client side of AUTH LOGIN
// (https://datatracker.ietf.org/doc/html/draft-murchison-sasl-login): the
// username, then the password, each in answer to a prompt. go-sasl's
// LOGIN client sends the username as an initial response and insists on
// the prompt "Password:"; servers that want the classic exchange
// (334 VXNlcm5hbWU6, "Username:") or word the prompt otherwise refuse it.
type loginClient struct {
	user, pass string
	step       int
}

func (c *loginClient) Start() (string, []byte, error) { return sasl.Login, nil, nil }

func (c *loginClient) Next(challenge []byte) ([]byte, error) {
	c.step++
	switch {
	case c.step == 1 && !strings.Contains(strings.ToLower(string(challenge)), "pass"):
		return []byte(c.user), nil
	case c.step <= 2:
		c.step = 2
		return []byte(c.pass), nil
	}
	return nil, sasl.ErrUnexpectedServerChallenge
}

// tlsConfig returns the client TLS configuration for rt: verified for a
// smarthost (unless configured otherwise), unverified for opportunistic MX.
func (r *Relay) tlsConfig(rt route) *tls.Config {
	cfg := &tls.Config{ServerName: rt.host, MinVersion: tls.VersionTLS12}
	if sh := rt.smarthost; sh != nil {
		cfg.InsecureSkipVerify = sh.SmarthostInsecureSkipVerify
		cfg.RootCAs = sh.SmarthostRootCAs
	} else {
		// Opportunistic TLS protects against passive eavesdropping only;
		// most MX certificates would not verify against the MX name.
		cfg.InsecureSkipVerify = true
	}
	return cfg
}

// startTLS does what go-smtp's client cannot with our EHLO name: it reads
// the greeting, says EHLO cfg.Hostname, and, if STARTTLS is offered (or
// required), upgrades the connection. It returns the connection to give
// go-smtp, which replays a greeting so that go-smtp's client starts as on a
// fresh connection (and says EHLO again, as RFC 3207 requires after TLS).
func (r *Relay) startTLS(raw net.Conn, cfg *tls.Config, required bool) (net.Conn, error) {
	br := bufio.NewReader(raw)
	tp := textproto.NewReader(br)
	cmd := func(line string, want int) (string, error) {
		if err := raw.SetDeadline(time.Now().Add(r.conf().CommandTimeout)); err != nil {
			return "", err
		}
		if line != "" {
			if _, err := fmt.Fprintf(raw, "%s\r\n", line); err != nil {
				return "", err
			}
		}
		_, msg, err := tp.ReadResponse(want)
		var te *textproto.Error
		if errors.As(err, &te) {
			return "", &smtp.SMTPError{Code: te.Code, Message: te.Msg}
		}
		return msg, err
	}
	greeting, err := cmd("", 220)
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	msg, err := cmd("EHLO "+r.conf().Hostname, 250)
	if err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	offered := false
	for _, l := range strings.Split(msg, "\n")[1:] {
		if strings.EqualFold(strings.TrimSpace(l), "STARTTLS") {
			offered = true
		}
	}
	replay := []byte("220 " + firstLine(greeting) + "\r\n")
	if !offered {
		if required {
			return nil, errors.New("server does not offer STARTTLS, which relay.smarthost_tls requires")
		}
		if br.Buffered() > 0 {
			return nil, errors.New("server sent unexpected data after EHLO")
		}
		return &replayConn{Conn: raw, prefix: replay}, nil
	}
	if _, err := cmd("STARTTLS", 220); err != nil {
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	if br.Buffered() > 0 {
		// Data pipelined before the handshake would be injected into the
		// TLS session (CVE-2011-0411 and friends).
		return nil, errors.New("server sent data before the TLS handshake")
	}
	if err := raw.SetDeadline(time.Now().Add(r.conf().ConnectTimeout)); err != nil {
		return nil, err
	}
	tc := tls.Client(raw, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("%w: %w", errTLSHandshake, err)
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return &replayConn{Conn: tc, prefix: replay}, nil
}

// firstLine returns the first line of a multi-line reply text.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// replayConn hands go-smtp a greeting that was already read.
type replayConn struct {
	net.Conn
	prefix []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// connPool keeps idle connections per host for reuse.
type connPool struct {
	mu     sync.Mutex
	idle   map[string][]*conn
	closed bool
}

func newConnPool() *connPool { return &connPool{idle: make(map[string][]*conn)} }

// get takes the most recently used idle connection for key, or nil.
func (p *connPool) get(key string) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := p.idle[key]
	if len(cs) == 0 {
		return nil
	}
	c := cs[len(cs)-1]
	p.idle[key] = cs[:len(cs)-1]
	if len(p.idle[key]) == 0 {
		delete(p.idle, key)
	}
	return c
}

// put returns a clean connection to the pool.
func (p *connPool) put(key string, c *conn) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.close()
		return
	}
	c.idle = time.Now()
	p.idle[key] = append(p.idle[key], c)
	p.mu.Unlock()
}

// expire closes connections idle for longer than idleTimeout (all of them
// when all is set).
func (p *connPool) expire(all bool) {
	var old []*conn
	p.mu.Lock()
	now := time.Now()
	for k, cs := range p.idle {
		keep := cs[:0]
		for _, c := range cs {
			if all || now.Sub(c.idle) >= idleTimeout {
				old = append(old, c)
			} else {
				keep = append(keep, c)
			}
		}
		if len(keep) == 0 {
			delete(p.idle, k)
		} else {
			p.idle[k] = keep
		}
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range old {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.close()
		}()
	}
	wg.Wait()
}

// janitor closes idle connections until ctx ends or stop is closed.
func (p *connPool) janitor(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stop:
			return
		case <-t.C:
			p.expire(false)
		}
	}
}

// closeAll closes every idle connection and refuses new ones.
func (p *connPool) closeAll() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.expire(true)
}

// localIP returns the local IP address of a TCP connection, "" if it has
// none.
func localIP(c net.Conn) string {
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return ""
}
