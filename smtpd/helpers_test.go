package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/smtp"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/auth"
	"github.com/smtpgw/smtpgw/internal/logtest"
	"github.com/smtpgw/smtpgw/internal/pgtest"
	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/internal/tlstest"
	"github.com/smtpgw/smtpgw/store"
)

// backends are the stores every SPEC §4 table runs on.
var backends = []string{"sqlite", "postgres"}

// testEnv is a running server on a real store, with a master key.
type testEnv struct {
	t       testing.TB
	backend string
	url     string // "" for SQLite
	dataDir string
	st      store.Store
	v       *auth.Verifier
	mgr     *auth.Manager
	srv     *Server
	pair    *tlstest.Pair
	reg     *prometheus.Registry
	logs    *logtest.Buffer
	key     string // master key with smtp/inject
	keyID   string
	// shutDownEarly: the test called Shutdown itself and checked its result.
	shutDownEarly bool
}

// setup starts a server on a fresh store of backend; mod may change the
// configuration first.
func setup(t testing.TB, backend string, mod func(*Config)) *testEnv {
	t.Helper()
	return setupBudget(t, backend, mod, 100)
}

// setupBudget is setup with a failed-authentication budget of maxFails per
// minute (negative: none) for the Verifier.
func setupBudget(t testing.TB, backend string, mod func(*Config), maxFails int) *testEnv {
	t.Helper()
	e := &testEnv{t: t, backend: backend, dataDir: t.TempDir(), pair: tlstest.New(t), logs: &logtest.Buffer{}}
	if backend == "postgres" {
		e.url = pgtest.URL(t)
	}
	e.st = storetest.OpenURL(t, e.url, e.dataDir)
	e.v = auth.NewVerifier(e.st, auth.Config{CacheTTL: -1, MaxFailures: maxFails, FailureWindow: time.Minute})
	t.Cleanup(func() { e.v.Close() })
	e.mgr = auth.NewManager(e.st, e.v)
	e.key, e.keyID = e.newKey(auth.CreateParams{Label: "test", Grants: []string{"smtp/inject"}})

	certFile, keyFile, _ := e.pair.Files(t)
	cfg := Config{
		Hostname:        "gw.test",
		SubmissionAddr:  "127.0.0.1:0",
		SubmissionsAddr: "127.0.0.1:0",
		TLSCert:         certFile,
		TLSKey:          keyFile,
		DataDir:         e.dataDir,
		MaxMessageBytes: 64 << 10,
		MaxRecipients:   10,
		IdleTimeout:     30 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	e.reg = prometheus.NewRegistry()
	srv, err := New(cfg, e.st, e.v, e.reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	e.srv = srv
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && !e.shutDownEarly {
			t.Errorf("Shutdown: %v", err)
		}
		// Whatever happened, no API key may appear in the log.
		if strings.Contains(e.logs.String(), e.key) {
			t.Errorf("the API key appears in the log")
		}
	})
	return e
}

// newKey creates an API key and returns it with its id.
func (e *testEnv) newKey(p auth.CreateParams) (string, string) {
	e.t.Helper()
	e.subaccount(p.Subaccount, store.SubaccountActive)
	key, k, err := e.mgr.Create(context.Background(), p)
	if err != nil {
		e.t.Fatalf("create key: %v", err)
	}
	return key, k.ID
}

// subaccount creates subaccount id with status unless it is 0 or exists;
// an existing one gets status.
func (e *testEnv) subaccount(id int64, status string) {
	e.t.Helper()
	if id == 0 {
		return
	}
	ctx := context.Background()
	sa := &store.Subaccount{ID: id, Name: fmt.Sprintf("tenant %d", id), Status: status}
	err := e.st.CreateSubaccount(ctx, sa)
	if errors.Is(err, store.ErrExists) {
		_, err = e.st.UpdateSubaccount(ctx, sa)
	}
	if err != nil {
		e.t.Fatalf("subaccount %d: %v", id, err)
	}
}

// dial connects to the STARTTLS listener with net/smtp and says EHLO.
func (e *testEnv) dial() *smtp.Client {
	e.t.Helper()
	c, err := smtp.Dial(e.srv.SubmissionAddr().String())
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		e.t.Fatalf("EHLO: %v", err)
	}
	return c
}

// dialTLS connects, says EHLO and upgrades with STARTTLS.
func (e *testEnv) dialTLS() *smtp.Client {
	e.t.Helper()
	c := e.dial()
	if err := c.StartTLS(e.pair.Client()); err != nil {
		e.t.Fatalf("STARTTLS: %v", err)
	}
	return c
}

// dialAuth connects with STARTTLS and authenticates with PLAIN.
func (e *testEnv) dialAuth(username, key string) *smtp.Client {
	e.t.Helper()
	c := e.dialTLS()
	if err := c.Auth(smtp.PlainAuth("", username, key, "127.0.0.1")); err != nil {
		e.t.Fatalf("AUTH: %v", err)
	}
	return c
}

// send runs MAIL, RCPT… and DATA, returning the first error.
func send(c *smtp.Client, from string, to []string, msg string) error {
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	return w.Close()
}

// wantCode fails t unless err is an SMTP reply with code and enhanced code.
func wantCode(t testing.TB, err error, code int, enhanced string) {
	t.Helper()
	var te *textproto.Error
	if !errors.As(err, &te) {
		t.Fatalf("got %v, want reply %d %s", err, code, enhanced)
	}
	if te.Code != code || !strings.HasPrefix(te.Msg, enhanced+" ") {
		t.Fatalf("got reply %d %s, want %d %s", te.Code, te.Msg, code, enhanced)
	}
}

// messages lists the stored messages with their bodies.
func (e *testEnv) messages() []*store.Message {
	e.t.Helper()
	return listMessages(e.t, e.st)
}

func listMessages(t testing.TB, st store.Store) []*store.Message {
	t.Helper()
	ctx := context.Background()
	list, err := st.ListMessages(ctx, store.QueueFilter{})
	if err != nil {
		t.Fatalf("list messages: %v", err)
	}
	out := make([]*store.Message, 0, len(list))
	for _, m := range list {
		full, err := st.GetMessage(ctx, m.ID)
		if err != nil {
			t.Fatalf("get message %s: %v", m.ID, err)
		}
		out = append(out, full)
	}
	return out
}

// rawConn is a hand-driven SMTP connection, for what net/smtp cannot say.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	tp *textproto.Conn
}

// dialRaw connects to addr; with implicit, over TLS from the first byte.
// It reads the greeting.
func (e *testEnv) dialRaw(addr string, implicit bool) *rawConn {
	e.t.Helper()
	var nc net.Conn
	var err error
	if implicit {
		nc, err = tls.Dial("tcp", addr, e.pair.Client())
	} else {
		nc, err = net.Dial("tcp", addr)
	}
	if err != nil {
		e.t.Fatalf("dial %s: %v", addr, err)
	}
	e.t.Cleanup(func() { _ = nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		e.t.Fatalf("set deadline: %v", err)
	}
	r := &rawConn{t: e.t, nc: nc, tp: textproto.NewConn(nc)}
	r.expect(220)
	return r
}

// startTLS upgrades a raw connection and says EHLO again.
func (r *rawConn) startTLS(cfg *tls.Config) {
	r.t.Helper()
	r.cmd(220, "STARTTLS")
	tc := tls.Client(r.nc, cfg)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	r.nc = tc
	r.tp = textproto.NewConn(tc)
	r.cmd(250, "EHLO client.test")
}

// authPlain authenticates with AUTH PLAIN and an initial response.
func (r *rawConn) authPlain(user, key string) {
	r.t.Helper()
	r.cmd(235, "AUTH PLAIN %s", b64("\x00"+user+"\x00"+key))
}

// send writes a command line without waiting for the reply.
func (r *rawConn) send(format string, args ...any) {
	r.t.Helper()
	if err := r.tp.PrintfLine(format, args...); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// write writes raw bytes.
func (r *rawConn) write(s string) {
	r.t.Helper()
	if _, err := r.tp.W.WriteString(s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
	if err := r.tp.W.Flush(); err != nil {
		r.t.Fatalf("flush: %v", err)
	}
}

// reply reads one (possibly multi-line) reply.
func (r *rawConn) reply() (int, string, error) {
	return r.tp.ReadResponse(0)
}

// expect reads a reply and fails unless it has code; returns its text.
func (r *rawConn) expect(code int) string {
	r.t.Helper()
	got, msg, err := r.reply()
	if got != code {
		r.t.Fatalf("got reply %d %q (%v), want %d", got, msg, err, code)
	}
	return msg
}

// cmd sends a command and expects code.
func (r *rawConn) cmd(code int, format string, args ...any) string {
	r.t.Helper()
	r.send(format, args...)
	return r.expect(code)
}

// closed reports whether the server closed the connection (reading gives
// EOF or a reset).
func (r *rawConn) closed() bool {
	if err := r.nc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return true
	}
	_, err := bufio.NewReader(r.tp.R).ReadByte()
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func b64(s string) string {
	return base64.StdEncoding.EncodeToString([]byte(s))
}

// message returns a small message with the given extra header lines.
func message(from string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Sender <%s>\r\nTo: rcpt@example.net\r\nSubject: test\r\n", from)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\nHello.\r\n")
	return b.String()
}

func tlsDial(addr string, e *testEnv) (net.Conn, error) {
	return tls.Dial("tcp", addr, e.pair.Client())
}

func newTextproto(nc net.Conn) *textproto.Conn {
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	return textproto.NewConn(nc)
}
