package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// received is one message the target accepted.
type received struct {
	from     string
	to       []string
	data     []byte
	tls      bool
	mailOpts smtp.MailOptions
	rcptOpts []smtp.RcptOptions
}

// targetOpts configures a test SMTP server.
type targetOpts struct {
	listen      string      // address to listen on; "" is 127.0.0.1:0
	tlsConfig   *tls.Config // offer STARTTLS (or implicit TLS) with it
	implicitTLS bool
	requireTLS  bool     // refuse MAIL without TLS
	authUser    string   // require AUTH (PLAIN, or authMechs) with these credentials
	authMechs   []string // mechanisms offered: PLAIN and/or LOGIN; nil: PLAIN
	authPass    string
	noDSN       bool // don't advertise DSN
	// mail decides the MAIL reply; n counts earlier MAILs in the session.
	mail func(n int) error
	// rcpt decides the RCPT reply; n counts earlier RCPTs for that address.
	rcpt func(to string, n int) error
	// data decides the DATA reply; n counts earlier DATA commands.
	data func(n int) error
	// dropData closes the connection in the middle of the first dropData
	// DATA transfers.
	dropData int
	// noUTF8 does not advertise SMTPUTF8.
	noUTF8 bool
	// maxRcpts is the server's recipient limit per transaction (go-smtp
	// answers 452 4.5.3 past it); 0: none.
	maxRcpts int
	// noChunking keeps CHUNKING out of the EHLO reply (go-smtp always
	// offers it), so that clients send DATA.
	noChunking bool
}

// target is a go-smtp server standing in for a smarthost or an MX; it
// records what it accepted.
type target struct {
	opts  targetOpts
	srv   *smtp.Server
	addr  string
	port  int
	mu    sync.Mutex
	got   []received
	rcpts map[string]int
	datas int
	conns int
	// Commands seen on plain connections (sniffConn): BDAT and DATA.
	bdatCmds, dataCmds int
}

// sniffListener gives a target's connections a sniffConn.
type sniffListener struct {
	net.Listener
	tg *target
}

func (l sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, tg: l.tg}, nil
}

// sniffConn counts the BDAT and DATA commands a client sends (on a plain
// connection; a TLS one shows only ciphertext) and, for noChunking,
// renames CHUNKING in what the server writes.
type sniffConn struct {
	net.Conn
	tg *target
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.tg.mu.Lock()
	c.tg.bdatCmds += bytes.Count(p[:n], []byte("BDAT "))
	c.tg.dataCmds += bytes.Count(p[:n], []byte("DATA\r\n"))
	c.tg.mu.Unlock()
	return n, err
}

func (c *sniffConn) Write(p []byte) (int, error) {
	if c.tg.opts.noChunking {
		p = bytes.ReplaceAll(p, []byte("CHUNKING"), []byte("XHUNKING"))
	}
	return c.Conn.Write(p)
}

func newTarget(t testing.TB, opts targetOpts) *target {
	t.Helper()
	tg := &target{opts: opts, rcpts: make(map[string]int)}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		tg.mu.Lock()
		tg.conns++
		tg.mu.Unlock()
		return &tsession{tg: tg, c: c}, nil
	}))
	srv.Domain = "target.test"
	srv.AllowInsecureAuth = !opts.requireTLS
	srv.EnableDSN = !opts.noDSN
	srv.EnableSMTPUTF8 = !opts.noUTF8
	srv.MaxRecipients = opts.maxRcpts
	srv.TLSConfig = opts.tlsConfig
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.ErrorLog = log.New(io.Discard, "", 0)
	addr := opts.listen
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("target listen: %v", err)
	}
	l = sniffListener{Listener: raw, tg: tg}
	if opts.implicitTLS {
		l = tls.NewListener(l, opts.tlsConfig)
	}
	tg.srv = srv
	tg.addr = l.Addr().String()
	tg.port = l.Addr().(*net.TCPAddr).Port
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return tg
}

// connCount returns how many connections the target has taken.
func (tg *target) connCount() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.conns
}

// relayInOrder starts a relay to tg over one connection (one worker), so
// messages go in the order they are queued, and returns its store. Each
// tune, if any, adjusts the relay's configuration first.
func relayInOrder(t testing.TB, tg *target, tune ...func(*Config)) store.Store {
	t.Helper()
	st := storetest.Open(t, "sqlite")
	cfg := smarthostConfig(t, tg)
	cfg.Workers, cfg.SmarthostConcurrency = 1, 1
	for _, f := range tune {
		f(&cfg)
	}
	startRelay(t, cfg, st)
	return st
}

// messages returns a copy of what was received so far.
func (tg *target) messages() []received {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]received(nil), tg.got...)
}

// waitFor polls until cond holds on the received messages, failing t after
// 30 s (a bound for a broken relay, not a speed assertion).
func (tg *target) waitFor(t testing.TB, what string, cond func([]received) bool) []received {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := tg.messages()
		if cond(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("target: timed out waiting for %s; got %d messages", what, len(got))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type tsession struct {
	tg     *target
	c      *smtp.Conn
	cur    received
	authed bool
	mails  int
}

func (s *tsession) AuthMechanisms() []string {
	if s.tg.opts.authUser == "" {
		return nil
	}
	if s.tg.opts.authMechs != nil {
		return s.tg.opts.authMechs
	}
	return []string{sasl.Plain}
}

func (s *tsession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user == s.tg.opts.authUser && pass == s.tg.opts.authPass {
			s.authed = true
			return nil
		}
		return smtp.ErrAuthFailed
	}
	if mech == sasl.Login {
		return &loginServer{check: check}, nil
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error { return check(user, pass) }), nil
}

// loginServer is the server side of AUTH LOGIN as classic servers run it:
// prompts "Username:" and "Password:" (an initial response is the
// username).
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		if len(resp) > 0 {
			l.user, l.step = string(resp), 2
			return []byte("Password:"), false, nil
		}
		l.step = 1
		return []byte("Username:"), false, nil
	case 1:
		l.user, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	}
	return nil, true, l.check(l.user, string(resp))
}

func (s *tsession) Mail(from string, opts *smtp.MailOptions) error {
	_, isTLS := s.c.TLSConnectionState()
	if s.tg.opts.requireTLS && !isTLS {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	}
	if s.tg.opts.authUser != "" && !s.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	n := s.mails
	s.mails++
	if s.tg.opts.mail != nil {
		if err := s.tg.opts.mail(n); err != nil {
			return err
		}
	}
	s.cur = received{from: from, tls: isTLS}
	if opts != nil {
		s.cur.mailOpts = *opts
	}
	return nil
}

func (s *tsession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.tg.mu.Lock()
	n := s.tg.rcpts[to]
	s.tg.rcpts[to]++
	s.tg.mu.Unlock()
	if s.tg.opts.rcpt != nil {
		if err := s.tg.opts.rcpt(to, n); err != nil {
			return err
		}
	}
	s.cur.to = append(s.cur.to, to)
	if opts != nil {
		s.cur.rcptOpts = append(s.cur.rcptOpts, *opts)
	} else {
		s.cur.rcptOpts = append(s.cur.rcptOpts, smtp.RcptOptions{})
	}
	return nil
}

func (s *tsession) Data(r io.Reader) error {
	s.tg.mu.Lock()
	n := s.tg.datas
	s.tg.datas++
	s.tg.mu.Unlock()
	if n < s.tg.opts.dropData {
		var b [64]byte
		_, _ = io.ReadFull(r, b[:])
		_ = s.c.Conn().Close()
		return &smtp.SMTPError{Code: 421, Message: "dropped"}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.tg.opts.data != nil {
		if err := s.tg.opts.data(n); err != nil {
			return err
		}
	}
	s.cur.data = data
	s.tg.mu.Lock()
	s.tg.got = append(s.tg.got, s.cur)
	s.tg.mu.Unlock()
	return nil
}

func (s *tsession) Reset()        { s.cur = received{} }
func (s *tsession) Logout() error { return nil }

// smtpErr builds an upstream reply.
func smtpErr(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// testLogger logs to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// smarthostConfig is a relay config that sends everything to tg in plain
// text, with tiny retry delays.
func smarthostConfig(t testing.TB, tg *target) Config {
	return Config{
		Hostname:       "relay.test",
		Mode:           ModeSmarthost,
		Smarthost:      tg.addr,
		SmarthostTLS:   TLSNone,
		Workers:        4,
		RetryInitial:   10 * time.Millisecond,
		RetryMax:       50 * time.Millisecond,
		ConnectTimeout: 5 * time.Second,
		CommandTimeout: 10 * time.Second,
		Logger:         testLogger(t),
	}
}

// startRelay creates and starts a relay, stopped when the test ends (before
// the store closes, since cleanups run last-in first-out).
func startRelay(t testing.TB, cfg Config, st store.Store) *Relay {
	t.Helper()
	r, err := New(cfg, st, nil)
	if err != nil {
		t.Fatalf("new relay: %v", err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("start relay: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

// msgOpt adjusts a test message.
type msgOpt func(*store.Message)

// enqueue stores a message from mailFrom to rcpts with the given body.
func enqueue(t testing.TB, st store.Store, mailFrom string, rcpts []string, body string, opts ...msgOpt) *store.Message {
	t.Helper()
	m := &store.Message{
		ID:         store.NewID(),
		KeyID:      "k1",
		Subaccount: 7,
		MailFrom:   mailFrom,
		CampaignID: "camp",
		Body:       []byte(body),
	}
	for _, a := range rcpts {
		m.Recipients = append(m.Recipients, &store.Recipient{Address: a, Domain: domainOf(a)})
	}
	for _, o := range opts {
		o(m)
	}
	if err := st.Enqueue(context.Background(), m); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	return m
}

// testBody returns a small message with the given From and Subject.
func testBody(from, subject string) string {
	return "From: " + from + "\r\n" +
		"To: someone@dest.test\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Mon, 23 Nov 2026 21:00:00 +0000\r\n" +
		"Message-ID: <" + subject + "@src.test>\r\n" +
		"\r\n" +
		"Hello,\r\nthis is " + subject + ".\r\n"
}

// final reports whether a recipient state is final.
func final(s string) bool {
	return s == store.StateDelivered || s == store.StateBounced || s == store.StateExpired
}

// waitFinal polls until every recipient of message id is in a final state
// and returns the message, failing t after 30 s.
func waitFinal(t testing.TB, st store.Store, id string) *store.Message {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := st.GetMessage(context.Background(), id)
		if err != nil {
			t.Fatalf("get message %s: %v", id, err)
		}
		done := true
		for _, r := range m.Recipients {
			done = done && final(r.State)
		}
		if done {
			return m
		}
		if time.Now().After(deadline) {
			var states []string
			for _, r := range m.Recipients {
				states = append(states, r.Address+"="+r.State+" ("+r.LastReply+")")
			}
			t.Fatalf("message %s: timed out waiting for final states: %s", id, strings.Join(states, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rcptState returns the state and last reply of address in m.
func rcptState(t testing.TB, m *store.Message, address string) (string, string) {
	t.Helper()
	for _, r := range m.Recipients {
		if r.Address == address {
			return r.State, r.LastReply
		}
	}
	t.Fatalf("message %s has no recipient %s", m.ID, address)
	return "", ""
}

// eventTypes lists the event types of message id for recipient, oldest first.
func eventTypes(t testing.TB, st store.Store, id, rcpt string) []string {
	t.Helper()
	evs, err := st.ListEvents(context.Background(), store.EventFilter{MessageID: id})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	var out []string
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Recipient == rcpt {
			out = append(out, evs[i].Type)
		}
	}
	return out
}

// countBy counts received messages per value of key.
func countBy(got []received, key func(received) string) map[string]int {
	m := make(map[string]int)
	for _, g := range got {
		m[key(g)]++
	}
	return m
}

// headerValue returns the first value of header k in a raw message.
func headerValue(data []byte, k string) string {
	hdr := headerSection(data)
	for _, line := range strings.Split(string(hdr), "\r\n") {
		if name, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, k) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// fmtStates is for failure messages.
func fmtStates(m *store.Message) string {
	var b strings.Builder
	for _, r := range m.Recipients {
		fmt.Fprintf(&b, "%s=%s (%s) ", r.Address, r.State, r.LastReply)
	}
	return b.String()
}
