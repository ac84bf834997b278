// Package smtpd is smtpgw's SMTP submission side (SPEC §4), built on
// github.com/emersion/go-smtp.
//
// A message goes through these steps:
//
//  1. A listener accepts the connection: "submission" offers STARTTLS,
//     "submissions" speaks TLS from the first byte (RFC 8314). Behind a
//     trusted load balancer the client address comes from its PROXY
//     protocol header; PROXY headers from anyone else are refused.
//  2. The client authenticates with AUTH PLAIN or LOGIN (RFC 4954), offered
//     only under TLS unless AllowInsecureAuth. The password is an API key,
//     checked by auth.Verifier (smtp/inject grant, allowed IPs). The
//     username selects the subaccount (SMTP_Injection:X-MSYS-SUBACCOUNT=N).
//     Failed attempts spend the client address's failed-authentication
//     budget, which the Verifier holds and shares with the HTTP API and
//     /metrics; past it the client gets 421 and is disconnected.
//  3. At MAIL, the key's node-local burst guard (KeyRateLimit) and the
//     cluster-wide sending limits of the key and its subaccount
//     (limits.Checker) must let the message through, else 451 4.7.1
//     naming the limit: nothing is accepted to be held. MAIL and RCPT
//     addresses are checked and DSN parameters (RFC 3461) kept. DATA or BDAT (RFC 3030) bodies are read up to MaxMessageBytes.
//  4. The header is parsed losslessly: X-MSYS-API is parsed and removed,
//     the From: domain is checked against the sending domains, Received:
//     is prepended and Message-ID:/Date: added when missing (RFC 6409 §8).
//  5. The message is handed to store.Enqueue, which commits it together
//     with other sessions' messages (group commit). Only then does the
//     client get "250 2.0.0 OK queued as <id>"; any store failure is
//     "451 4.3.0" and nothing of the message is stored.
//
// Every reply to the client is a named value from reply.go chosen by one
// function, reply(err); causes go to the log under the connection's id.
// Shutdown is two-phase (mox): new transactions are refused with 421 4.3.2
// while running ones finish, then what is left is closed.
package smtpd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/limits"
	"github.com/smtpgw/smtpgw/store"
	"github.com/smtpgw/smtpgw/suppression"
)

// Defaults for zero Config fields (SPEC §8).
const (
	DefaultMaxMessageBytes = 20 << 20
	DefaultMaxRecipients   = 1000
	DefaultIdleTimeout     = 60 * time.Second
	// DefaultMaxConnectionsPerIP is Postfix's
	// smtpd_client_connection_count_limit.
	DefaultMaxConnectionsPerIP = 50
	// DefaultMaxJunkCommands is Postfix's smtpd_junk_command_limit.
	DefaultMaxJunkCommands = 100
	DefaultAuthTimeout     = 30 * time.Second
	DefaultDataTimeout     = 10 * time.Minute
	DefaultMaxInflight     = 256 << 20
	DefaultMaxReceived     = 50
	DefaultMaxHeaderBytes  = 1 << 20
	// DefaultAuthUsername is SparkPost's SMTP injection username.
	DefaultAuthUsername = "SMTP_Injection"
)

// enqueueTimeout bounds the checks before storing a message, and then the
// wait for its commit (a variable for tests).
var enqueueTimeout = 30 * time.Second

const (
	// maxTotalRecipients caps the envelope recipients of one message,
	// X-MSYS-API cc/bcc/archive included (SPEC §4).
	maxTotalRecipients = 1000
	// authTimeout bounds one key lookup.
	authTimeout = 10 * time.Second
	// proxyHeaderTimeout bounds the wait for a PROXY header.
	proxyHeaderTimeout = 10 * time.Second
	// rejectTimeout bounds the refusal of a connection over the limit.
	rejectTimeout = 10 * time.Second
	// maxCommandBytes bounds what a client may send while go-smtp reads
	// one command line (go-smtp's own line limit is off, see New): far
	// more than any command, a pipelined batch or a TLS record, and
	// little enough memory.
	maxCommandBytes = 128 << 10
)

// Values of Config.BareLineEndings.
const (
	// BareNormalize stores every bare CR or LF as CRLF (the default).
	BareNormalize = "normalize"
	// BareReject refuses a message with a bare CR or LF (550 5.6.0).
	BareReject = "reject"
)

// Handoff takes freshly stored messages straight to delivery (implemented
// by relay.Relay): Reserve asks for room for a message's recipients before
// it is stored; if granted, the message is stored under the returned lease
// and given to Handoff once committed, or the room is given back with
// Release when it is not stored.
type Handoff interface {
	Reserve(ctx context.Context, recipients int, domains []string) (store.Lease, bool)
	Handoff(l store.Lease, claimed []*store.Claimed)
	Release(recipients int)
}

// Config configures a Server. Zero values select the defaults above.
type Config struct {
	// Hostname is the name in the banner, EHLO reply, Received: and
	// Message-ID:; "" means os.Hostname().
	Hostname string
	// SubmissionAddr is the STARTTLS listener's address; "" disables it.
	SubmissionAddr string
	// SubmissionsAddr is the implicit-TLS listener's address; "" disables it.
	SubmissionsAddr string
	// TLSCert and TLSKey are PEM files; both "" selects a self-signed
	// certificate kept in DataDir (see LoadOrCreateCert).
	TLSCert, TLSKey string
	// DataDir holds the self-signed certificate.
	DataDir string
	// AllowInsecureAuth offers AUTH without TLS: for development only.
	AllowInsecureAuth bool
	// AuthUsernames are the accepted AUTH usernames, compared without
	// regard to case; "*" accepts any. Empty means ["SMTP_Injection"].
	AuthUsernames []string
	// MaxMessageBytes limits the size of a message as received.
	MaxMessageBytes int64
	// MaxRecipients limits the envelope recipients of a message
	// (X-MSYS-API cc/bcc/archive included; never more than 1000 of those).
	MaxRecipients int
	// IdleTimeout closes a session that sends nothing for this long.
	IdleTimeout time.Duration
	// ProxyProtocolFrom are the load balancers trusted to send a PROXY
	// protocol (v1 or v2) header, which they must send; PROXY headers from
	// other peers are refused like any unknown command.
	ProxyProtocolFrom []netip.Prefix
	// MaxConnections limits concurrent connections over all listeners; 0
	// means no limit. Connections over it get 421 4.7.0 and are closed.
	MaxConnections int
	// KeyRateLimit is how many messages per second one API key may inject
	// on this node, over all its sessions; 0 means no limit. MAIL over it
	// gets 451 4.7.1.
	KeyRateLimit float64
	// KeyRateBurst is how many messages a key may send at once before
	// KeyRateLimit applies; 0 means KeyRateLimit rounded up (at least 1).
	KeyRateBurst int
	// Limits enforces the sending limits of keys and subaccounts at MAIL
	// (share it with the API so that changes made there apply at once on
	// this node). Nil: New makes one over the store with the default
	// cache TTL, closed by Shutdown.
	Limits *limits.Checker
	// CertCheckInterval is how often TLSCert and TLSKey are checked for a
	// change (then loaded again); 0 means DefaultCertCheckInterval.
	CertCheckInterval time.Duration
	// Suppressions answers the suppression list checks at RCPT and DATA
	// (share it with the API so that changes made there apply at once on
	// this node). Nil: New makes one over the store with
	// suppression.DefaultTTL.
	Suppressions *suppression.Checker
	// Handoff, if not nil, takes each message the moment it is stored to
	// this node's delivery workers (the relay), stored already leased to
	// them, instead of leaving it for a claim.
	Handoff Handoff
	// RequireVerifiedDomains refuses at DATA (550 5.7.1) a message whose
	// From: domain is not a sending domain whose DKIM record was verified
	// (relay.require_verified_domains).
	RequireVerifiedDomains bool
	// MaxConnectionsPerIP limits concurrent connections from one client
	// address (IPv6: one /64; the PROXY source behind a trusted balancer);
	// 0 means DefaultMaxConnectionsPerIP. Connections over it get 421 4.7.0
	// and are closed.
	MaxConnectionsPerIP int
	// MaxJunkCommands is how many commands that make no progress (NOOP,
	// RSET, VRFY, HELP, repeated EHLO, unknown or refused commands) a
	// session may send, counted afresh after each queued message; once they
	// are answered, the session gets 421 4.7.0 and the connection is
	// closed. 0 means the default.
	MaxJunkCommands int
	// AuthTimeout is how long after connecting a client must have
	// authenticated, else 421 4.7.0 and close; 0 means the default.
	AuthTimeout time.Duration
	// DataTimeout bounds one DATA or BDAT transfer from its start to its
	// reply, else 421 4.4.2 and close; 0 means the default.
	DataTimeout time.Duration
	// MaxInflightBytes is the budget of message bytes being received and
	// stored at once over all sessions (at least MaxMessageBytes; 0 means
	// the default). MAIL with a SIZE= that does not fit, or when the budget
	// is used up, and a message that outgrows it, get 452 4.3.1.
	MaxInflightBytes int64
	// BareLineEndings is BareNormalize ("" too) or BareReject.
	BareLineEndings string
	// MaxReceivedHeaders is the most Received: fields a message may carry;
	// more is a mail loop (554 5.4.6). 0 means the default.
	MaxReceivedHeaders int
	// MaxHeaderBytes bounds a message's header block (552 5.3.4); 0 means
	// the default.
	MaxHeaderBytes int64
	// Logger receives the session logs; nil means slog.Default().
	Logger *slog.Logger
}

// Server is the SMTP submission server. Create it with New, then Start it
// and finally Shutdown.
type Server struct {
	cfg       Config                     // with defaults applied
	st        store.Store                // where messages, events and domains live
	verifier  *auth.Verifier             // checks the API key given as AUTH password
	log       *slog.Logger               // server-wide; sessions add conn_id and remote
	metrics   *metrics                   // see metrics.go
	tlsConfig *tls.Config                // STARTTLS and implicit TLS, TLS 1.2+; its certificate from certs
	certs     *CertHolder                // the current certificate (see Reload)
	smtp      *smtp.Server               // go-smtp, serving every listener
	domains   domainCache                // sending domains, refreshed every 5 s
	rates     atomic.Pointer[keyLimiter] // nil: no per-key limit; replaced by Reload
	maxConns  atomic.Int64               // MaxConnections; replaced by Reload
	limitsMu  sync.Mutex                 // serializes Reload
	rateLimit float64                    // KeyRateLimit and KeyRateBurst of rates
	rateBurst int
	stopCerts chan struct{}        // closed by Shutdown: ends the certificate check
	quota     *limits.Checker      // cluster-wide sending limits
	ownQuota  bool                 // quota was made by New: Shutdown closes it
	usernames []string             // accepted AUTH usernames, lowercased; nil: any
	supp      *suppression.Checker // the suppression list, cached
	budget    *budget              // in-flight message bytes
	spoolDir  string               // where large messages are spooled

	// baseCtx is the parent of every session's context; cancelled when
	// Shutdown gives up waiting.
	baseCtx    context.Context
	cancelBase context.CancelFunc
	// draining is set by Shutdown: MAIL is refused with 421 4.3.2.
	draining atomic.Bool

	mu        sync.Mutex           // guards the fields below
	started   bool                 // Start was called
	listeners []net.Listener       // closed by Shutdown
	subAddr   net.Addr             // bound submission address, nil if disabled
	subsAddr  net.Addr             // bound submissions address, nil if disabled
	conns     map[*conn]struct{}   // open connections
	perIP     map[netip.Prefix]int // open connections by client address (IPv6 /64)
	connsWG   sync.WaitGroup       // one per open conn
	serveWG   sync.WaitGroup       // one per Serve goroutine

	// shutdownDone is closed when the first Shutdown call returns, with
	// its result in shutdownErr.
	shutdownDone chan struct{}
	shutdownErr  error
}

// New checks cfg, loads (or creates) the TLS certificate and prepares the
// server; it does not listen yet. reg, if not nil, receives the metrics.
func New(cfg Config, st store.Store, v *auth.Verifier, reg prometheus.Registerer) (*Server, error) {
	if st == nil || v == nil {
		return nil, errors.New("new smtp server: store and verifier are required")
	}
	if cfg.SubmissionAddr == "" && cfg.SubmissionsAddr == "" {
		return nil, errors.New("new smtp server: no listener: set smtp.submission_addr and/or smtp.submissions_addr")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("new smtp server: hostname: %w (set hostname)", err)
		}
		cfg.Hostname = h
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if cfg.MaxRecipients <= 0 {
		cfg.MaxRecipients = DefaultMaxRecipients
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if len(cfg.AuthUsernames) == 0 {
		cfg.AuthUsernames = []string{DefaultAuthUsername}
	}
	if cfg.MaxConnectionsPerIP <= 0 {
		cfg.MaxConnectionsPerIP = DefaultMaxConnectionsPerIP
	}
	if cfg.MaxJunkCommands <= 0 {
		cfg.MaxJunkCommands = DefaultMaxJunkCommands
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	if cfg.DataTimeout <= 0 {
		cfg.DataTimeout = DefaultDataTimeout
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = DefaultMaxInflight
	}
	cfg.MaxInflightBytes = max(cfg.MaxInflightBytes, cfg.MaxMessageBytes)
	switch cfg.BareLineEndings {
	case "":
		cfg.BareLineEndings = BareNormalize
	case BareNormalize, BareReject:
	default:
		return nil, fmt.Errorf("new smtp server: smtp.bare_line_endings: %q is not %q or %q", cfg.BareLineEndings, BareNormalize, BareReject)
	}
	if cfg.MaxReceivedHeaders <= 0 {
		cfg.MaxReceivedHeaders = DefaultMaxReceived
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	s := &Server{
		cfg:          cfg,
		st:           st,
		verifier:     v,
		log:          cfg.Logger,
		conns:        make(map[*conn]struct{}),
		perIP:        make(map[netip.Prefix]int),
		spoolDir:     spoolDir(cfg.DataDir),
		shutdownDone: make(chan struct{}),
		domains:      domainCache{st: st, ttl: domainCacheTTL},
		rateLimit:    cfg.KeyRateLimit,
		rateBurst:    cfg.KeyRateBurst,
		stopCerts:    make(chan struct{}),
		quota:        cfg.Limits,
	}
	if s.quota == nil {
		s.quota, s.ownQuota = limits.New(st, limits.Config{Logger: cfg.Logger}), true
	}
	s.supp = cfg.Suppressions
	if s.supp == nil {
		s.supp = suppression.NewChecker(st, suppression.DefaultTTL)
	}
	for _, u := range cfg.AuthUsernames {
		if u == "*" {
			s.usernames = nil
			break
		}
		if u == "" || strings.Contains(u, ":") {
			return nil, fmt.Errorf("new smtp server: smtp.auth_usernames: %q is not a valid username (no colon, not empty)", u)
		}
		s.usernames = append(s.usernames, strings.ToLower(u))
	}
	s.rates.Store(newKeyLimiter(cfg.KeyRateLimit, cfg.KeyRateBurst))
	s.maxConns.Store(int64(cfg.MaxConnections))
	if cfg.CertCheckInterval <= 0 {
		cfg.CertCheckInterval = DefaultCertCheckInterval
		s.cfg.CertCheckInterval = cfg.CertCheckInterval
	}
	var err error
	if s.certs, err = NewCertHolder(cfg.TLSCert, cfg.TLSKey, cfg.DataDir, cfg.Hostname, s.log); err != nil {
		return nil, fmt.Errorf("new smtp server: %w", err)
	}
	s.tlsConfig = &tls.Config{GetCertificate: s.certs.GetCertificate, MinVersion: tls.VersionTLS12}
	if s.metrics, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("new smtp server: %w", err)
	}
	s.budget = &budget{max: cfg.MaxInflightBytes, gauge: s.metrics.inflight}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())

	srv := smtp.NewServer(backend{s})
	srv.Domain = cfg.Hostname
	srv.TLSConfig = s.tlsConfig
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.AllowInsecureAuth = cfg.AllowInsecureAuth
	// go-smtp's line limit is off: once hit, its reader fails for good, so
	// a long line in DATA got two replies and a disconnect. msgReader
	// limits message lines (one reply, the session goes on) and conn
	// limits command lines (maxCommandBytes).
	srv.MaxLineLength = 0
	// ReadTimeout must not be 0: go-smtp then sets the read deadline
	// before each command line, which is how conn counts commands.
	srv.ReadTimeout = cfg.IdleTimeout
	srv.WriteTimeout = cfg.IdleTimeout
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	// Never srv.Debug: it copies every byte, AUTH included, to the writer.
	srv.ErrorLog = errorLog{s.log}
	s.smtp = srv
	return s, nil
}

// Start binds every configured listener (returning the first bind error,
// with nothing left open) and serves them in background goroutines.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("start smtp server: already started")
	}
	type spec struct {
		name, addr string
		implicit   bool
		dst        *net.Addr
	}
	specs := []spec{
		{"submission", s.cfg.SubmissionAddr, false, &s.subAddr},
		{"submissions", s.cfg.SubmissionsAddr, true, &s.subsAddr},
	}
	var ls []*listener
	for _, sp := range specs {
		if sp.addr == "" {
			continue
		}
		raw, err := net.Listen("tcp", sp.addr)
		if err != nil {
			for _, l := range ls {
				_ = l.Close()
			}
			return fmt.Errorf("start smtp server: listen on %s (smtp.%s_addr): %w", sp.addr, sp.name, err)
		}
		ls = append(ls, s.newListener(raw, sp.name, sp.implicit))
		*sp.dst = raw.Addr()
	}
	s.started = true
	go s.certs.Watch(s.cfg.CertCheckInterval, s.stopCerts)
	if s.cfg.AllowInsecureAuth {
		s.log.Warn("SMTP AUTH IS ALLOWED WITHOUT TLS (smtp.allow_insecure_auth = true): API keys can be read off the network. Use this for development only")
	}
	for _, l := range ls {
		s.listeners = append(s.listeners, l)
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			err := s.smtp.Serve(l)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Error("smtp listener stopped", "listener", l.name, "err", err)
			}
		}()
		s.log.Info("smtp listening", "listener", l.name, "addr", l.Addr().String(), "implicit_tls", l.implicitTLS)
	}
	return nil
}

// SubmissionAddr is the bound address of the STARTTLS listener, or nil.
func (s *Server) SubmissionAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subAddr
}

// SubmissionsAddr is the bound address of the implicit-TLS listener, or nil.
func (s *Server) SubmissionsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subsAddr
}

// Shutdown stops the server in two phases. First, new transactions are
// refused (MAIL gets 421 4.3.2 and the connection is closed), the listeners
// stop accepting, and sessions with no transaction under way are told 421
// 4.3.2 and closed. Sessions in the middle of a message may finish it
// until ctx ends. Then every connection left gets 421 4.3.2 and is closed,
// and their pending store calls are cancelled. It returns ctx's error if
// sessions had to be cut off. Calling it again returns the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.draining.Swap(true) {
		<-s.shutdownDone
		return s.shutdownErr
	}
	defer close(s.shutdownDone)
	close(s.stopCerts)
	s.mu.Lock()
	for _, l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Warn("close smtp listener", "err", err)
		}
	}
	s.mu.Unlock()
	s.serveWG.Wait()

	closeAll(s.snapshotConns(), (*conn).closeIfIdle)
	done := make(chan struct{})
	go func() {
		s.connsWG.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("shutdown smtp server: %w", ctx.Err())
		left := s.snapshotConns()
		s.log.Warn("smtp shutdown grace period over: closing sessions", "sessions", len(left))
		s.cancelBase()
		closeAll(left, func(c *conn) { c.closeWith(ErrShuttingDown) })
		<-done
	}
	s.cancelBase()
	if s.ownQuota {
		s.quota.Close()
	}
	s.shutdownErr = err // read by later calls after shutdownDone is closed
	return err
}

// closeAll runs f on every conn in parallel: a peer that does not read
// must not hold up the others.
func closeAll(cs []*conn, f func(*conn)) {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { f(c) })
	}
	wg.Wait()
}

func (s *Server) snapshotConns() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// newListener wraps a bound TCP listener with PROXY protocol handling,
// connection limits and tracking and, for submissions, TLS, and starts
// accepting.
func (s *Server) newListener(raw net.Listener, name string, implicitTLS bool) *listener {
	var inner net.Listener = raw
	if len(s.cfg.ProxyProtocolFrom) > 0 {
		trusted := s.cfg.ProxyProtocolFrom
		inner = &proxyproto.Listener{
			Listener:          raw,
			ReadHeaderTimeout: proxyHeaderTimeout,
			ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
				if addrIn(o.Upstream, trusted) {
					// A trusted balancer always sends the header; a
					// connection without one is refused at its first read.
					return proxyproto.REQUIRE, nil
				}
				// Not wrapped: a PROXY line from anyone else is just an
				// unknown command.
				return proxyproto.SKIP, nil
			},
		}
	}
	l := &listener{Listener: inner, srv: s, name: name, implicitTLS: implicitTLS,
		ready: make(chan net.Conn), closed: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func addrIn(a net.Addr, prefixes []netip.Prefix) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// listener hands go-smtp tracked connections, TLS-wrapped for submissions,
// and turns away connections over MaxConnections or MaxConnectionsPerIP.
// Each accepted connection is admitted in a goroutine of its own: finding
// the client address may mean waiting for a PROXY header, which must not
// hold up the others.
type listener struct {
	net.Listener
	srv         *Server
	name        string
	implicitTLS bool

	ready     chan net.Conn // admitted connections for Accept
	closed    chan struct{} // closed when the accept loop ends
	acceptErr error         // why it ended; read after closed
}

// acceptLoop accepts connections and admits each in its own goroutine.
func (l *listener) acceptLoop() {
	defer close(l.closed)
	var delay time.Duration
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Too many open files and the like: wait, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.srv.log.Warn("smtp accept", "listener", l.name, "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			l.acceptErr = err
			return
		}
		delay = 0
		go l.admit(nc)
	}
}

// admit registers nc within the limits and hands it to Accept, or refuses
// it with 421.
func (l *listener) admit(nc net.Conn) {
	// For a PROXY connection this reads the header.
	ip := addrOf(nc.RemoteAddr())
	c, refusal := l.srv.track(nc, l.name, ip)
	if refusal != nil {
		l.reject(nc, refusal)
		return
	}
	var out net.Conn = c
	if l.implicitTLS {
		// The writer is set by NewSession, after the handshake: a write
		// from Shutdown must not start or wait on one.
		out = tls.Server(c, l.srv.tlsConfig)
	} else {
		c.setWriter(c)
	}
	select {
	case l.ready <- out:
	case <-l.closed:
		_ = c.Close()
	}
}

// Accept returns the next admitted connection.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, l.acceptErr
	}
}

// reject tells a connection over a limit to come back later.
func (l *listener) reject(nc net.Conn, e *smtp.SMTPError) {
	defer func() { _ = nc.Close() }()
	var w net.Conn = nc
	if l.implicitTLS {
		w = tls.Server(nc, l.srv.tlsConfig)
	}
	if err := w.SetDeadline(time.Now().Add(rejectTimeout)); err != nil {
		return
	}
	_, _ = fmt.Fprintf(w, "%s\r\n", replyLine(e))
	_ = w.Close()
}

func replyLine(e *smtp.SMTPError) string {
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
}

// ipKey is what connections are counted by: an IPv4 address, or the /64
// of an IPv6 address (one host's usual allocation).
func ipKey(ip netip.Addr) netip.Prefix {
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{} // an invalid address: counted together
	}
	return p
}

// track registers a new connection from ip, or returns the reply refusing
// it: MaxConnections or MaxConnectionsPerIP are open (or the server is
// shutting down).
func (s *Server) track(nc net.Conn, listenerName string, ip netip.Addr) (*conn, *smtp.SMTPError) {
	key := ipKey(ip)
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.maxConns.Load(); s.draining.Load() || (max > 0 && int64(len(s.conns)) >= max) {
		s.metrics.rejectedConns.Inc()
		return nil, ErrTooManyConnections
	}
	if s.perIP[key] >= s.cfg.MaxConnectionsPerIP {
		s.metrics.limit.WithLabelValues(limitName(ErrTooManyFromIP)).Inc()
		s.log.Info("connection refused: too many from this address", "remote", ip.String(), "open", s.perIP[key])
		return nil, ErrTooManyFromIP
	}
	now := time.Now()
	c := &conn{Conn: nc, srv: s, id: newConnID(), listener: listenerName, remote: ip, ipKey: key,
		authDeadline: now.Add(s.cfg.AuthTimeout), progress: true}
	c.logger = s.log.With("conn_id", c.id, "remote", ip.String(), "listener", listenerName)
	s.conns[c] = struct{}{}
	s.perIP[key]++
	s.connsWG.Add(1)
	s.metrics.connections.WithLabelValues(listenerName).Inc()
	s.metrics.active.Inc()
	// A client that never sends a command is not read from: the auth
	// deadline is enforced by a timer as well as by reads.
	c.authTimer = time.AfterFunc(s.cfg.AuthTimeout, func() { c.fire(ErrAuthTimeout) })
	return c, nil
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.perIP[c.ipKey]--; s.perIP[c.ipKey] <= 0 {
		delete(s.perIP, c.ipKey)
	}
	s.mu.Unlock()
	s.metrics.active.Dec()
	s.connsWG.Done()
}

func newConnID() string {
	var b [6]byte
	// crypto/rand.Read never returns an error (Go 1.24+).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// conn is one client connection as accepted (after any PROXY header,
// before TLS). It tracks whether a transaction is under way, so Shutdown
// knows which sessions it may close at once, and can close itself right
// after the next reply is written (421 replies).
//
// It also enforces the limits go-smtp has no hook for. go-smtp sets the
// read deadline before reading each command line (Server.ReadTimeout is
// never 0), through TLS too, so SetReadDeadline marks the start of a
// command: a command after which no session callback reported progress
// was junk (NOOP, VRFY, HELP, RSET, unknown or refused commands), and the
// bytes read until the next reply are one command line. Reads are cut at
// the auth deadline (until AUTH succeeds) and at the data deadline (during
// a transfer), however steadily bytes arrive. Whichever limit is hit, the
// client gets its 421 (or 500) and the connection is closed; go-smtp then
// sees a closed connection and writes nothing more.
type conn struct {
	net.Conn              // TCP, or the PROXY-protocol conn over it
	srv      *Server      // that accepted it
	id       string       // conn_id in the logs
	listener string       // "submission" or "submissions"
	remote   netip.Addr   // client address, unmapped
	ipKey    netip.Prefix // what MaxConnectionsPerIP counts
	logger   *slog.Logger // with conn_id, remote, listener

	closeAfterWrite atomic.Bool // close once the next reply is written
	closeOnce       sync.Once   // Close runs once
	fireOnce        sync.Once   // a limit closes the connection once, with its reply
	authTimer       *time.Timer // fires the auth deadline on a silent client

	// Replies are held until the session next reads (or 4 KiB are
	// waiting, or the connection closes): a client that pipelines MAIL,
	// RCPT and DATA gets their three replies in one write, as RFC 2920
	// §3.2 allows. go-smtp writes every reply at once; it is not forked.
	wmu  sync.Mutex
	wbuf []byte

	mu     sync.Mutex
	writer net.Conn // what replies are written to: c, or the TLS conn over it; nil while unknown
	inTx   bool     // between MAIL and the end of the message or RSET
	closed bool

	lmu          sync.Mutex // guards the limit state below
	authDeadline time.Time  // zero once authenticated
	dataDeadline time.Time  // zero outside a DATA/BDAT transfer
	dataReturned bool       // the transfer's Data returned: its deadline ends at the next reply
	readingCmd   bool       // a command line is being read
	cmdBytes     int        // bytes read for it so far
	progress     bool       // a session callback made progress since the last command began
	junk         int        // commands without progress since the last queued message
	tlsCredited  bool       // tlsStarted ran
}

// Read reads and, as data arrives, pushes the read deadline out by the
// idle timeout (go-smtp sets it once per command line, which would cut off
// a large DATA transfer that takes longer than the idle timeout in all),
// but never past the auth or data deadline.
func (c *conn) Read(b []byte) (int, error) {
	if e := c.expired(); e != nil {
		return 0, c.fire(e)
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.lmu.Lock()
		over := false
		if c.readingCmd {
			c.cmdBytes += n
			over = c.cmdBytes > maxCommandBytes
		}
		hard := c.hardDeadline()
		c.lmu.Unlock()
		if over {
			return 0, c.fire(ErrCommandTooLong)
		}
		d := time.Now().Add(c.srv.cfg.IdleTimeout)
		if !hard.IsZero() && hard.Before(d) {
			d = hard
		}
		_ = c.Conn.SetReadDeadline(d)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		if e := c.expired(); e != nil {
			return n, c.fire(e)
		}
	}
	return n, err
}

// SetReadDeadline is called by go-smtp before it reads each command line
// (and once before the TLS handshake of an implicit-TLS connection): it
// counts commands without progress and applies the hard deadlines.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.lmu.Lock()
	if !c.progress {
		c.junk++
	}
	c.progress = false
	c.readingCmd, c.cmdBytes = true, 0
	junk := c.junk
	hard := c.hardDeadline()
	c.lmu.Unlock()
	if junk >= c.srv.cfg.MaxJunkCommands {
		return c.fire(ErrTooManyJunk)
	}
	if e := c.expired(); e != nil {
		return c.fire(e)
	}
	if !hard.IsZero() && hard.Before(t) {
		t = hard
	}
	return c.Conn.SetReadDeadline(t)
}

// hardDeadline is the earlier of the auth and data deadlines, or zero.
// c.lmu must be held.
func (c *conn) hardDeadline() time.Time {
	d := c.authDeadline
	if !c.dataDeadline.IsZero() && (d.IsZero() || c.dataDeadline.Before(d)) {
		d = c.dataDeadline
	}
	return d
}

// expired returns the reply for a hard deadline that has passed, or nil.
func (c *conn) expired() *smtp.SMTPError {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	now := time.Now()
	switch {
	case !c.dataDeadline.IsZero() && !now.Before(c.dataDeadline):
		return ErrDataTimeout
	case !c.authDeadline.IsZero() && !now.Before(c.authDeadline):
		return ErrAuthTimeout
	}
	return nil
}

// fire closes the connection for a limit with its reply, once, and returns
// the error go-smtp is to see (a closed connection: it writes nothing).
//
// A limit can be hit on two paths at once (the auth timer and a read
// timing out at the same deadline): the second waits until the first has
// written its reply, so go-smtp cannot close the connection under it.
func (c *conn) fire(e *smtp.SMTPError) error {
	c.fireOnce.Do(func() {
		c.srv.metrics.limit.WithLabelValues(limitName(e)).Inc()
		c.log().Info("closing connection: "+limitName(e), "code", e.Code)
		c.closeWith(e)
	})
	return net.ErrClosed
}

// markProgress records that the current command made progress (a session
// started, AUTH, an accepted MAIL or RCPT, message data).
func (c *conn) markProgress() {
	c.lmu.Lock()
	c.progress = true
	c.lmu.Unlock()
}

// tlsStarted takes back the junk counted for STARTTLS (or, with implicit
// TLS, for the handshake before the first command): TLS is progress.
func (c *conn) tlsStarted() {
	c.lmu.Lock()
	if !c.tlsCredited && c.junk > 0 {
		c.junk--
	}
	c.tlsCredited = true
	c.lmu.Unlock()
}

// messageQueued starts the junk count afresh.
func (c *conn) messageQueued() {
	c.lmu.Lock()
	c.junk = 0
	c.lmu.Unlock()
}

// authenticated lifts the auth deadline.
func (c *conn) authenticated() {
	c.lmu.Lock()
	c.authDeadline = time.Time{}
	c.lmu.Unlock()
	c.authTimer.Stop()
}

// startData sets the deadline of a DATA/BDAT transfer.
func (c *conn) startData(deadline time.Time) {
	c.lmu.Lock()
	c.dataDeadline, c.dataReturned, c.progress, c.readingCmd = deadline, false, true, false
	c.lmu.Unlock()
}

// endData marks the transfer's Data as returned: the deadline holds until
// the reply is written.
func (c *conn) endData() {
	c.lmu.Lock()
	c.dataReturned = true
	c.lmu.Unlock()
}

// Write writes and, if a 421 reply was just written, closes the connection.
// Any write ends the reading of a command line, and the data deadline of a
// finished transfer.
func (c *conn) Write(b []byte) (int, error) {
	c.lmu.Lock()
	c.readingCmd = false
	if c.dataReturned {
		c.dataDeadline, c.dataReturned = time.Time{}, false
	}
	c.lmu.Unlock()
	c.wmu.Lock()
	c.wbuf = append(c.wbuf, b...)
	var err error
	if len(c.wbuf) >= maxHeldReplies {
		err = c.flushLocked()
	}
	c.wmu.Unlock()
	if c.closeAfterWrite.Load() {
		_ = c.Close()
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// maxHeldReplies is how many bytes of replies wait for the next read.
const maxHeldReplies = 4 << 10

// flush sends the replies held.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *conn) flushLocked() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

// Close closes the connection once and unregisters it.
func (c *conn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.authTimer.Stop()
		// The last replies (221, a 421) go out first, if the client
		// takes them within a second.
		c.wmu.Lock()
		if len(c.wbuf) > 0 {
			_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = c.flushLocked()
		}
		c.wmu.Unlock()
		err = c.Conn.Close()
		c.srv.untrack(c)
		c.log().Debug("connection closed")
	})
	return err
}

// log returns the connection's logger, with its id and client address.
func (c *conn) log() *slog.Logger {
	return c.logger
}

// clientIP is the client's address: the TCP peer, or the PROXY source.
func (c *conn) clientIP() netip.Addr {
	return c.remote
}

func addrOf(a net.Addr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (c *conn) setWriter(w net.Conn) {
	c.mu.Lock()
	c.writer = w
	c.mu.Unlock()
}

// beginTx marks a transaction under way, unless the server is draining.
func (c *conn) beginTx() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv.draining.Load() {
		return false
	}
	c.inTx = true
	return true
}

func (c *conn) endTx() {
	c.mu.Lock()
	c.inTx = false
	c.mu.Unlock()
}

// closeIfIdle closes the connection with 421 4.3.2 unless a transaction is
// under way.
func (c *conn) closeIfIdle() {
	c.mu.Lock()
	idle := !c.inTx
	c.mu.Unlock()
	if idle {
		c.closeWith(ErrShuttingDown)
	}
}

// closeWith writes reply (if the connection's writer is known) and closes
// the connection. It is called from outside the connection's goroutine,
// which is blocked reading or finishing a command: the reply may interleave
// with one the session writes, which is acceptable at shutdown.
func (c *conn) closeWith(e *smtp.SMTPError) {
	c.mu.Lock()
	w, closed := c.writer, c.closed
	c.mu.Unlock()
	if !closed && w != nil {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = fmt.Fprintf(w, "%s\r\n", replyLine(e))
	}
	_ = c.Close()
}

// errorLog routes go-smtp's internal errors (failed TLS handshakes, broken
// connections, recovered panics) to slog.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) {
	l.print(fmt.Sprintf(format, v...))
}

func (l errorLog) Println(v ...any) {
	l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// print logs a recovered panic as an error; the rest (handshake failures,
// connections reset by the peer) is the noise of a public port.
func (l errorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		l.log.Error("smtp: " + msg)
		return
	}
	l.log.Debug("smtp: " + msg)
}
