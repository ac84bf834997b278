package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/internal/tlstest"
)

// sinkBackend is a go-smtp backend that keeps every message it receives and
// accepts one AUTH PLAIN password.
type sinkBackend struct {
	mu     sync.Mutex
	bodies [][]byte
	rcpts  []string
	key    string
	open   bool          // MAIL needs no AUTH
	stall  time.Duration // the first message's DATA waits this long
}

func (b *sinkBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{b: b}, nil }

type sinkSession struct {
	b      *sinkBackend
	authed bool
}

func (s *sinkSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *sinkSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, _, password string) error {
		if password != s.b.key {
			return errors.New("bad key")
		}
		s.authed = true
		return nil
	}), nil
}
func (s *sinkSession) Mail(string, *smtp.MailOptions) error {
	if !s.authed && !s.b.open {
		return smtp.ErrAuthRequired
	}
	return nil
}
func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.b.mu.Lock()
	s.b.rcpts = append(s.b.rcpts, to)
	s.b.mu.Unlock()
	return nil
}
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.mu.Lock()
	first := len(s.b.bodies) == 0
	s.b.bodies = append(s.b.bodies, b)
	s.b.mu.Unlock()
	if first {
		time.Sleep(s.b.stall)
	}
	return nil
}
func (s *sinkSession) Reset()        {}
func (s *sinkSession) Logout() error { return nil }

// TestBenchSends checks that the load generator's own SMTP client delivers
// every message intact (dot-stuffed on the wire, unstuffed by the server)
// over STARTTLS with AUTH, with DATA and with BDAT.
func TestBenchSends(t *testing.T) {
	pair := tlstest.New(t)
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "data", true: "bdat"}[chunking], func(t *testing.T) {
			be := &sinkBackend{key: "k3y"}
			o := benchOptions{Addr: startSink(t, be, pair), Key: "k3y", Username: "u", Conns: 3, Messages: 25,
				Size: 3000, TLS: "starttls", TLSConfig: pair.Client(), From: "a@b.test", To: "c@d.test",
				Chunking: chunking}
			res := runBench(context.Background(), o)
			if res.Failed != 0 || res.Sent != 25 {
				t.Fatalf("sent %d, failed %d (first error %q), want 25 sent", res.Sent, res.Failed, res.FirstError)
			}
			if len(res.Latencies) != 25 || res.percentile(0.99) <= 0 {
				t.Errorf("latencies %d, p99 %s: want 25 positive", len(res.Latencies), res.percentile(0.99))
			}
			be.mu.Lock()
			defer be.mu.Unlock()
			if len(be.bodies) != 25 {
				t.Fatalf("the server received %d messages, want 25", len(be.bodies))
			}
			first := be.bodies[0]
			if len(first) < 3000 || !bytes.Contains(first, []byte("\r\n\r\n.a line that starts with a dot\r\n")) ||
				!strings.HasSuffix(string(first), "\r\n") {
				t.Errorf("received message is not the one sent (%d bytes): %.200q", len(first), first)
			}
			for i, b := range be.bodies {
				if !bytes.Equal(b, first) {
					t.Fatalf("message %d differs from message 0", i)
				}
			}
		})
	}
}

// TestBenchDistinctRecipients: a --to holding %d gives each message its
// own recipient, numbered from 1, with DATA and with BDAT.
func TestBenchDistinctRecipients(t *testing.T) {
	pair := tlstest.New(t)
	for _, chunking := range []bool{false, true} {
		be := &sinkBackend{key: "k3y"}
		o := benchOptions{Addr: startSink(t, be, pair), Key: "k3y", Username: "u", Conns: 3, Messages: 20,
			Size: 500, TLS: "starttls", TLSConfig: pair.Client(), From: "a@b.test", To: "r%d@d.test",
			Chunking: chunking}
		if res := runBench(context.Background(), o); res.Failed != 0 || res.Sent != 20 {
			t.Fatalf("chunking %v: sent %d, failed %d (%q)", chunking, res.Sent, res.Failed, res.FirstError)
		}
		be.mu.Lock()
		got := map[string]bool{}
		for _, r := range be.rcpts {
			got[r] = true
		}
		be.mu.Unlock()
		for i := 1; i <= 20; i++ {
			if r := fmt.Sprintf("r%d@d.test", i); !got[r] {
				t.Errorf("chunking %v: no message to %s (got %v)", chunking, r, got)
			}
		}
		if len(got) != 20 {
			t.Errorf("chunking %v: %d distinct recipients, want 20", chunking, len(got))
		}
	}
}

// TestBenchWrongKey checks that a refused AUTH fails every message with the
// server's reply.
func TestBenchWrongKey(t *testing.T) {
	be := &sinkBackend{key: "right"}
	srv := smtp.NewServer(be)
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	res := runBench(context.Background(), benchOptions{Addr: ln.Addr().String(), Key: "wrong", Conns: 1,
		Messages: 2, Size: 300, TLS: "none", From: "a@b.test", To: "c@d.test"})
	if res.Sent != 0 || res.Failed != 2 || !strings.Contains(res.FirstError, "AUTH: 454 4.7.0 bad key") {
		t.Fatalf("sent %d failed %d first error %q: want 2 failures with the reply to AUTH", res.Sent, res.Failed, res.FirstError)
	}
}

func TestDotStuff(t *testing.T) {
	for in, want := range map[string]string{
		"a\r\n.b\r\n":  "a\r\n..b\r\n",
		".x":           "..x\r\n",
		"..\r\nz\r\n.": "...\r\nz\r\n..\r\n",
		"":             "",
	} {
		if got := string(dotStuff([]byte(in))); got != want {
			t.Errorf("dotStuff(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBenchKeySources: the key comes from --key-file, else --key, else
// SMTPGW_KEY; none (or an empty file) is a usage error naming the ways.
func TestBenchKeySources(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/key"
	if err := os.WriteFile(file, []byte("  filekey\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := dir + "/empty"
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	withEnv := env{environ: []string{"PATH=/bin", "SMTPGW_KEY=envkey"}}
	for _, c := range []struct {
		flag, file string
		e          env
		want       string // "" : an error
	}{
		{"", file, withEnv, "filekey"},
		{"flagkey", "", withEnv, "flagkey"},
		{"", "", withEnv, "envkey"},
		{"", "", env{}, ""},
		{"", empty, withEnv, ""},
		{"flagkey", file, withEnv, ""},
	} {
		got, err := benchKey(c.flag, c.file, c.e)
		if c.want == "" {
			if err == nil {
				t.Errorf("benchKey(%q, %q): %q, want an error", c.flag, c.file, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("benchKey(%q, %q) = %q, %v; want %q", c.flag, c.file, got, err, c.want)
		}
	}
	if _, err := benchKey("", "", env{}); err == nil || !strings.Contains(err.Error(), "--key-file") || !strings.Contains(err.Error(), "SMTPGW_KEY") {
		t.Errorf("no key: %v, want an error naming --key-file and SMTPGW_KEY", err)
	}
}

// startSink serves be on a loopback port until the test ends and returns
// its address: with STARTTLS from pair, or without TLS if pair is nil.
func startSink(t *testing.T, be *sinkBackend, pair *tlstest.Pair) string {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = "sink.test"
	if pair != nil {
		srv.TLSConfig = pair.Server()
	} else {
		srv.AllowInsecureAuth = true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestBenchRate runs `smtpgw bench --rate` in-process: every message is
// sent, and the result line reports the rate asked for; a rate that is not
// a non-negative number is a usage error.
func TestBenchRate(t *testing.T) {
	be := &sinkBackend{key: "k3y"}
	addr := startSink(t, be, nil)
	var out bytes.Buffer
	e := env{stdout: &out, stderr: io.Discard, environ: []string{"SMTPGW_KEY=k3y"}}
	err := cmdBench(context.Background(), []string{"--addr", addr, "--tls", "none", "--insecure-skip-verify",
		"--conns", "3", "--messages", "12", "--size", "500", "--rate", "400"}, e)
	if err != nil {
		t.Fatalf("bench --rate 400: %v (%s)", err, out.String())
	}
	for _, want := range []string{" sessions=3 ", " rate=400 ", " sent=12 ", " failed=0 ", " msgs_per_s=", " max_start_lag="} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}
	be.mu.Lock()
	if len(be.bodies) != 12 {
		t.Errorf("the server received %d messages, want 12", len(be.bodies))
	}
	be.mu.Unlock()
	for _, bad := range []string{"-1", "x", "NaN", "Inf"} {
		err := cmdBench(context.Background(), []string{"--addr", addr, "--tls", "none", "--rate", bad}, e)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("--rate %s: %v, want a usage error", bad, err)
		}
	}
}

// TestBenchNoAuth: --no-auth sends without AUTH and without a key, to a
// server that relays for the client; a server that wants AUTH refuses the
// messages, and a key given with --no-auth is a usage error.
func TestBenchNoAuth(t *testing.T) {
	open := &sinkBackend{key: "k3y", open: true}
	var out bytes.Buffer
	e := env{stdout: &out, stderr: io.Discard}
	args := []string{"--tls", "none", "--no-auth", "--conns", "2", "--messages", "6", "--size", "500"}
	if err := cmdBench(context.Background(), append([]string{"--addr", startSink(t, open, nil)}, args...), e); err != nil {
		t.Fatalf("bench --no-auth: %v (%s)", err, out.String())
	}
	open.mu.Lock()
	if len(open.bodies) != 6 {
		t.Errorf("the server received %d messages, want 6", len(open.bodies))
	}
	open.mu.Unlock()

	closed := &sinkBackend{key: "k3y"}
	err := cmdBench(context.Background(), append([]string{"--addr", startSink(t, closed, nil)}, args...), e)
	if err == nil || !strings.Contains(err.Error(), "authenticate") {
		t.Errorf("bench --no-auth to a server that wants AUTH: %v, want its refusal", err)
	}

	err = cmdBench(context.Background(), append([]string{"--addr", "127.0.0.1:1", "--key", "k3y"}, args...), e)
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--no-auth") {
		t.Errorf("--no-auth with --key: %v, want a usage error naming --no-auth", err)
	}
}

// TestBenchRateCountsStall: with --rate, a message that waits for a
// stalled session is timed from when it was due. The server holds the first
// message's DATA for 300 ms on the only session; the five messages were due
// within 4 ms of the start, so each one's reply came at least 296 ms after
// it was due. (A closed-loop timer would give the four queued ones a
// fraction of a millisecond each.) A lower bound, so a slow machine cannot
// fail it.
func TestBenchRateCountsStall(t *testing.T) {
	const stall = 300 * time.Millisecond
	be := &sinkBackend{key: "k3y", stall: stall}
	res := runBench(context.Background(), benchOptions{Addr: startSink(t, be, nil), Key: "k3y", Conns: 1, Messages: 5,
		Size: 300, TLS: "none", From: "a@b.test", To: "c@d.test", Rate: 1000})
	if res.Sent != 5 || res.Failed != 0 {
		t.Fatalf("sent %d failed %d (%s), want 5 sent", res.Sent, res.Failed, res.FirstError)
	}
	for i, l := range res.Latencies {
		if l < stall-4*time.Millisecond {
			t.Errorf("reply %d: latency %s, want at least %s: the wait behind the stall is not counted", i, l, stall-4*time.Millisecond)
		}
	}
	if res.MaxLag < stall-4*time.Millisecond {
		t.Errorf("max start lag %s, want at least %s", res.MaxLag, stall-4*time.Millisecond)
	}
}

// TestBenchCPUProfile: --cpuprofile writes a profile go tool pprof reads,
// and a path that cannot be created is an error that names the flag.
func TestBenchCPUProfile(t *testing.T) {
	be := &sinkBackend{key: "k3y"}
	addr := startSink(t, be, nil)
	var out bytes.Buffer
	e := env{stdout: &out, stderr: io.Discard, environ: []string{"SMTPGW_KEY=k3y"}}
	path := filepath.Join(t.TempDir(), "client.pprof")
	args := []string{"--addr", addr, "--tls", "none", "--conns", "2", "--messages", "20", "--size", "500"}
	if err := cmdBench(context.Background(), append(args, "--cpuprofile", path), e); err != nil {
		t.Fatalf("bench --cpuprofile: %v (%s)", err, out.String())
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A pprof profile is a gzipped protocol buffer.
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("the profile is not gzipped: %v", err)
	}
	if n, err := io.Copy(io.Discard, zr); err != nil || n == 0 {
		t.Errorf("the profile holds %d bytes (%v), want a profile", n, err)
	}
	err = cmdBench(context.Background(), append(args, "--cpuprofile", filepath.Join(t.TempDir(), "no", "such", "dir", "p")), e)
	if err == nil || !strings.Contains(err.Error(), "--cpuprofile") {
		t.Errorf("bench --cpuprofile into a missing directory: %v, want an error naming --cpuprofile", err)
	}
}

// TestBenchSendsEnvelopeAhead: with PIPELINING and DATA, the next
// message's envelope is written with this message's end of data, in one
// write, and the next send writes nothing before reading its replies; the
// last message goes alone.
func TestBenchSendsEnvelopeAhead(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	c := &benchConn{conn: client, r: textproto.NewReader(bufio.NewReader(client)), pipeline: true,
		envHead: "MAIL FROM:<a@example.com>\r\nRCPT TO:<", envTail: ">\r\nDATA\r\n", toFmt: "r%d@example.net",
		data: []byte("Subject: x\r\n\r\nx\r\n.\r\n"), timeout: 5 * time.Second}
	env := func(n int) string {
		return fmt.Sprintf("MAIL FROM:<a@example.com>\r\nRCPT TO:<r%d@example.net>\r\nDATA\r\n", n)
	}
	// Each Read of a net.Pipe returns what one Write wrote (the buffer is
	// large enough).
	script := []struct{ want, reply string }{
		{env(1), "250 ok\r\n250 ok\r\n354 go on\r\n"},
		{string(c.data) + env(2), "250 queued 1\r\n250 ok\r\n250 ok\r\n354 go on\r\n"},
		{string(c.data), "250 queued 2\r\n"},
	}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<16)
		for i, step := range script {
			n, err := server.Read(buf)
			if err != nil {
				done <- err
				return
			}
			if got := string(buf[:n]); got != step.want {
				done <- fmt.Errorf("write %d: got %q, want %q", i+1, got, step.want)
				return
			}
			if _, err := server.Write([]byte(step.reply)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := c.send(1, 2); err != nil {
		t.Fatalf("send 1: %v", err)
	}
	if !c.ahead {
		t.Error("after send(1, 2) the session does not hold message 2's envelope")
	}
	if err := c.send(2, 0); err != nil {
		t.Fatalf("send 2: %v", err)
	}
	if c.ahead {
		t.Error("after the last send the session still holds an envelope")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
