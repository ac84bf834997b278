package smtpd

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"net/smtp"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMessageLimits runs issue 8's limits on a message's content, on
// SQLite and PostgreSQL: each refusal is one reply after the data has been
// read, nothing is stored, and the session goes on.
func TestMessageLimits(t *testing.T) {
	t.Parallel()
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			for _, tc := range messageLimitCases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					tc.run(t, setup(t, backend, tc.mod))
				})
			}
		})
	}
}

// refusedData sends a transaction whose data is raw (already dot-stuffed,
// ending with ".\r\n"), expects code and enhanced, and checks that exactly
// one reply came (the next command gets its own answer) and nothing was
// stored.
func refusedData(t *testing.T, e *testEnv, r *rawConn, raw string, code int, enhanced string) {
	t.Helper()
	before := len(e.messages())
	r.cmd(250, "MAIL FROM:<sender@example.com>")
	r.cmd(250, "RCPT TO:<rcpt@example.net>")
	r.cmd(354, "DATA")
	r.write(raw)
	if msg := r.expect(code); !strings.HasPrefix(msg, enhanced+" ") {
		t.Fatalf("got %d %q, want %d %s", code, msg, code, enhanced)
	}
	// One reply only: a second one would answer this NOOP.
	if msg := r.cmd(250, "NOOP"); !strings.Contains(msg, "nothing") {
		t.Fatalf("NOOP answered %q: a second reply came", msg)
	}
	if n := len(e.messages()); n != before {
		t.Fatalf("%d messages stored, want %d", n, before)
	}
	// The session is usable.
	r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
}

var messageLimitCases = []submissionCase{
	{name: "over-long line: one reply, session goes on", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		refusedData(t, e, r, "Subject: long\r\n\r\n"+strings.Repeat("x", 2001)+"\r\n.\r\n", 550, "5.6.0")
		// Far longer than any buffer on the way, and than go-smtp's own
		// 2000-byte limit, which used to close the connection.
		e2 := e.authedRaw()
		refusedData(t, e, e2, "Subject: long\r\n\r\n"+strings.Repeat("y", 60<<10)+"\r\n.\r\n", 550, "5.6.0")
		// 2000 bytes is still fine.
		r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")+strings.Repeat("z", 2000)+"\r\n")
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("line_length")); got != 2 {
			t.Errorf("line_length limit metric = %v, want 2", got)
		}
	}},
	{name: "over-long line in BDAT", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		chunk := "Subject: long\r\n\r\n" + strings.Repeat("x", 5000) + "\r\n"
		r.write(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk))
		if msg := r.expect(550); !strings.HasPrefix(msg, "5.6.0 ") {
			t.Fatalf("BDAT long line: %q", msg)
		}
		r.cmd(250, "NOOP")
		if n := len(e.messages()); n != 0 {
			t.Fatalf("%d messages stored, want none", n)
		}
	}},
	{name: "bare CR and LF normalized", run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		r.cmd(354, "DATA")
		// "\r.\r\n" must not reach the next hop as is: a server that takes
		// a bare CR as a line end would see the end of the data there.
		r.write("From: <sender@example.com>\r\nSubject: cr\r\n\r\nbody\r.\r\nMAIL FROM:<evil@example.com>\r\nlf\nbare\rcr\r\n.\r\n")
		queuedID(t, r.expect(250))
		r.cmd(250, "NOOP")
		body := string(e.only(t).Body)
		if strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\r") || strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
			t.Fatalf("stored body has a bare CR or LF: %q", body)
		}
		if !strings.HasSuffix(body, "\r\n\r\nbody\r\n.\r\nMAIL FROM:<evil@example.com>\r\nlf\r\nbare\r\ncr\r\n") {
			t.Fatalf("stored body: %q", body)
		}
	}},
	{name: "bare line endings rejected", mod: func(c *Config) { c.BareLineEndings = BareReject }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		refusedData(t, e, r, "Subject: cr\r\n\r\nbody\r.\r\nmore\r\n.\r\n", 550, "5.6.0")
		refusedData(t, e, r, "Subject: lf\r\n\r\nbody\nmore\r\n.\r\n", 550, "5.6.0")
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("bare_line_ending")); got != 2 {
			t.Errorf("bare_line_ending limit metric = %v, want 2", got)
		}
	}},
	{name: "mail loop: too many Received", run: func(t *testing.T, e *testEnv) {
		hops := func(n int) string {
			var b strings.Builder
			for i := range n {
				fmt.Fprintf(&b, "Received: from hop%d.example by hop%d.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n", i, i+1)
			}
			return b.String()
		}
		r := e.authedRaw()
		refusedData(t, e, r, hops(51)+"Subject: loop\r\n\r\nbody\r\n.\r\n", 554, "5.4.6")
		r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, hops(50)+"Subject: fifty\r\n\r\nbody\r\n")
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("received_headers")); got != 1 {
			t.Errorf("received_headers limit metric = %v, want 1", got)
		}
	}},
	{name: "header too large", mod: func(c *Config) { c.MaxHeaderBytes = 4096 }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		big := strings.Repeat("X-Filler: "+strings.Repeat("f", 90)+"\r\n", 50)
		refusedData(t, e, r, big+"Subject: big header\r\n\r\nbody\r\n.\r\n", 552, "5.3.4")
		// A header block without an end counts too.
		refusedData(t, e, r, big+".\r\n", 552, "5.3.4")
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("header_bytes")); got != 2 {
			t.Errorf("header_bytes limit metric = %v, want 2", got)
		}
	}},
	{name: "in-flight budget", mod: func(c *Config) { c.MaxInflightBytes = 100 << 10 }, run: func(t *testing.T, e *testEnv) {
		a, b := e.authedRaw(), e.authedRaw()
		// A's SIZE= holds 64 KiB of the 100: B's does not fit, nor does a
		// MAIL without SIZE= (less than one 64 KiB step left).
		a.cmd(250, "MAIL FROM:<sender@example.com> SIZE=60000")
		if msg := b.cmd(452, "MAIL FROM:<sender@example.com> SIZE=60000"); !strings.HasPrefix(msg, "4.3.1 ") {
			t.Fatalf("MAIL SIZE= over the budget: %q", msg)
		}
		b.cmd(452, "MAIL FROM:<sender@example.com>")
		a.cmd(250, "RSET")
		// Released: B may start; then A's reservation leaves B's message,
		// which said no SIZE=, too little room: 452 after the data.
		b.cmd(250, "MAIL FROM:<sender@example.com>")
		b.cmd(250, "RCPT TO:<rcpt@example.net>")
		a.cmd(250, "MAIL FROM:<sender@example.com> SIZE=40000")
		b.cmd(354, "DATA")
		b.write("Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("b", 62)+"\r\n", 60<<10/64) + ".\r\n")
		if msg := b.expect(452); !strings.HasPrefix(msg, "4.3.1 ") {
			t.Fatalf("message over the budget: %q", msg)
		}
		b.cmd(250, "NOOP")
		// A's message, within its reservation, goes through.
		a.cmd(250, "RCPT TO:<rcpt@example.net>")
		a.data("Subject: fits\r\n\r\n" + strings.Repeat(strings.Repeat("a", 62)+"\r\n", 30000/64))
		if n := len(e.messages()); n != 1 {
			t.Fatalf("%d messages stored, want 1", n)
		}
		a.cmd(221, "QUIT")
		b.cmd(221, "QUIT")
		waitFor(t, "the in-flight budget to be free again", func() bool { return e.srv.budget.used.Load() == 0 })
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("inflight_bytes")); got != 3 {
			t.Errorf("inflight_bytes limit metric = %v, want 3", got)
		}
	}},
	{name: "large message spooled", mod: func(c *Config) { c.MaxMessageBytes = 4 << 20 }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		body := strings.Repeat(strings.Repeat("s", 74)+"\r\n", 3<<20/76)
		r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, "X-MSYS-API: {\"campaign_id\": \"big\"}\r\nSubject: spooled\r\n\r\n"+body)
		m := e.only(t)
		got := string(m.Body)
		if !strings.HasPrefix(got, "Received: ") || !strings.HasSuffix(got, "\r\nSubject: spooled\r\n\r\n"+body) ||
			strings.Contains(got, "X-MSYS-API") || m.CampaignID != "big" {
			t.Fatalf("stored message (%d bytes) is not the one sent with our header; begins %q", len(got), got[:min(len(got), 400)])
		}
		// The spool file was unlinked at once.
		ents, err := os.ReadDir(spoolDir(e.dataDir))
		if err != nil {
			t.Fatalf("the message was not spooled: %v", err)
		}
		if len(ents) != 0 {
			t.Fatalf("spool files left: %v", ents)
		}
		waitFor(t, "the in-flight budget to be free again", func() bool { return e.srv.budget.used.Load() == 0 })
	}},
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConnectionsPerIP is issue 8's first attack: 1,000 idle connections
// from one address must not lock out another. With the defaults
// (max_connections 1000, max_connections_per_ip 50), 50 of them are
// served and 950 refused, and a client from 127.0.0.2 sends at once.
func TestConnectionsPerIP(t *testing.T) {
	const idle = 1000
	raiseFileLimit(t, 2*idle+200) // both ends of every connection live in this process
	e := setup(t, "sqlite", func(c *Config) {
		c.MaxConnections = 1000
		c.MaxConnectionsPerIP = DefaultMaxConnectionsPerIP
	})
	addr := e.srv.SubmissionAddr().String()
	var served, refused int
	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range idle {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case strings.HasPrefix(line, "220 "):
			served++
		case strings.HasPrefix(line, "421 4.7.0 "):
			refused++
		default:
			t.Fatalf("connection %d greeted %q (%v)", len(conns), line, err)
		}
	}
	if served != DefaultMaxConnectionsPerIP || refused != idle-DefaultMaxConnectionsPerIP {
		t.Fatalf("%d connections served and %d refused, want %d and %d", served, refused, DefaultMaxConnectionsPerIP, idle-DefaultMaxConnectionsPerIP)
	}

	// Another address is served while the 50 stay open.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from 127.0.0.2: %v", err)
	}
	c, err := smtp.NewClient(nc, "127.0.0.1")
	if err != nil {
		t.Fatalf("client from 127.0.0.2 not served: %v", err)
	}
	defer c.Close()
	if err := c.Hello("other.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(e.pair.Client()); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(smtp.PlainAuth("", "SMTP_Injection", e.key, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com")); err != nil {
		t.Fatalf("client from 127.0.0.2: %v", err)
	}
	if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("connections_per_ip")); got != idle-DefaultMaxConnectionsPerIP {
		t.Errorf("connections_per_ip limit metric = %v, want %d", got, idle-DefaultMaxConnectionsPerIP)
	}
}

// raiseFileLimit raises this process's soft limit on open files to at
// least n, or fails saying how.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		t.Fatalf("the hard limit on open files is %d, this test needs %d: raise it (ulimit -Hn %d as root, or LimitNOFILE)", rl.Max, n, n)
	}
	old := rl.Cur
	rl.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("setrlimit to %d: %v", n, err)
	}
	t.Cleanup(func() {
		rl.Cur = old
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	})
}

// TestSessionLimits runs issue 8's limits on what a session may do with
// its connection; each ends with its reply and a closed connection.
func TestSessionLimits(t *testing.T) {
	t.Parallel()
	for _, tc := range sessionLimitCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, setup(t, "sqlite", tc.mod))
		})
	}
}

// closedWith expects a reply with code and enhanced, then the end of the
// connection.
func closedWith(t *testing.T, r *rawConn, code int, enhanced string) {
	t.Helper()
	if msg := r.expect(code); !strings.HasPrefix(msg, enhanced+" ") {
		t.Fatalf("got %d %q, want %s", code, msg, enhanced)
	}
	if !r.closed() {
		t.Fatal("connection still open after the reply")
	}
}

var sessionLimitCases = []submissionCase{
	{name: "junk commands, TLS", mod: func(c *Config) { c.MaxJunkCommands = 6 }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		// Progress does not count: a whole message, then junk.
		r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
		for _, cmd := range []string{"NOOP", "RSET", "VRFY x", "NOOP", "EHLO again.test", "NOOP"} {
			r.send("%s", cmd)
			if code, msg, err := r.reply(); err != nil || code/100 != 2 {
				t.Fatalf("%s answered %d %s (%v) before the limit", cmd, code, msg, err)
			}
		}
		// The sixth was the last: the server says so without waiting.
		closedWith(t, r, 421, "4.7.0")
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("junk_commands")); got != 1 {
			t.Errorf("junk_commands limit metric = %v, want 1", got)
		}
	}},
	{name: "junk commands, plain", mod: func(c *Config) { c.MaxJunkCommands = 3 }, run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.cmd(502, "HELP")
		r.cmd(250, "NOOP")
		r.cmd(530, "MAIL FROM:<a@example.com>") // refused: before AUTH
		closedWith(t, r, 421, "4.7.0")
	}},
	{name: "a message resets the junk count", mod: func(c *Config) { c.MaxJunkCommands = 3 }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		for range 3 {
			r.cmd(250, "NOOP")
			r.cmd(250, "NOOP")
			r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
		}
		r.cmd(250, "NOOP")
	}},
	{name: "auth timeout, silent client", mod: func(c *Config) { c.AuthTimeout = time.Second }, run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		closedWith(t, r, 421, "4.7.0")
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("auth_timeout")); got != 1 {
			t.Errorf("auth_timeout limit metric = %v, want 1", got)
		}
	}},
	{name: "auth timeout, busy client", mod: func(c *Config) { c.AuthTimeout = time.Second }, run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		r.startTLS(e.pair.Client())
		// Steady commands do not extend it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			r.send("NOOP")
			code, msg, _ := r.reply()
			if code == 421 {
				if !strings.HasPrefix(msg, "4.7.0 ") {
					t.Fatalf("got 421 %q, want 4.7.0", msg)
				}
				break
			}
			if code != 250 || time.Now().After(deadline) {
				t.Fatalf("NOOP answered %d %q; no auth timeout", code, msg)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !r.closed() {
			t.Fatal("connection still open after the auth timeout")
		}
	}},
	{name: "auth timeout spares authenticated sessions", mod: func(c *Config) { c.AuthTimeout = 500 * time.Millisecond }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		time.Sleep(time.Second)
		r.sendMessage("sender@example.com", []string{"rcpt@example.net"}, message("sender@example.com"))
	}},
	{name: "data timeout: a trickle is cut off", mod: func(c *Config) { c.DataTimeout = time.Second }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		r.cmd(354, "DATA")
		r.write("Subject: trickle\r\n\r\n")
		// One byte every 100 ms: every read is well within the idle
		// timeout, the transfer is not.
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 100 {
				if _, err := r.nc.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		closedWith(t, r, 421, "4.4.2")
		<-done
		if n := len(e.messages()); n != 0 {
			t.Fatalf("%d messages stored, want none", n)
		}
		if got := testutil.ToFloat64(e.srv.metrics.limit.WithLabelValues("data_timeout")); got != 1 {
			t.Errorf("data_timeout limit metric = %v, want 1", got)
		}
	}},
	{name: "data timeout applies to BDAT", mod: func(c *Config) { c.DataTimeout = time.Second }, run: func(t *testing.T, e *testEnv) {
		r := e.authedRaw()
		r.cmd(250, "MAIL FROM:<sender@example.com>")
		r.cmd(250, "RCPT TO:<rcpt@example.net>")
		chunk := "Subject: chunks\r\n\r\nx\r\n"
		for {
			// The server may have closed by now: write errors are fine.
			_, _ = fmt.Fprintf(r.nc, "BDAT %d\r\n%s", len(chunk), chunk)
			code, msg, _ := r.reply()
			if code == 421 {
				if !strings.HasPrefix(msg, "4.4.2 ") {
					t.Fatalf("got 421 %q, want 4.4.2", msg)
				}
				break
			}
			if code != 250 {
				t.Fatalf("BDAT answered %d %q", code, msg)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}},
	{name: "command line too long", run: func(t *testing.T, e *testEnv) {
		r := e.dialRaw(e.srv.SubmissionAddr().String(), false)
		r.cmd(250, "EHLO client.test")
		go func() { _, _ = r.nc.Write([]byte("NOOP " + strings.Repeat("x", 1<<20))) }()
		closedWith(t, r, 500, "5.5.2")
	}},
}

// TestConnectionsPerIPKey: IPv4 addresses are counted one by one, IPv6
// addresses by /64.
func TestConnectionsPerIPKey(t *testing.T) {
	t.Parallel()
	same := [][2]string{{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"}, {"192.0.2.7", "::ffff:192.0.2.7"}}
	for _, p := range same {
		if a, b := ipKey(netip.MustParseAddr(p[0]).Unmap()), ipKey(netip.MustParseAddr(p[1]).Unmap()); a != b {
			t.Errorf("%s and %s counted apart (%s, %s)", p[0], p[1], a, b)
		}
	}
	apart := [][2]string{{"2001:db8:1:2::1", "2001:db8:1:3::1"}, {"192.0.2.7", "192.0.2.8"}}
	for _, p := range apart {
		if ipKey(netip.MustParseAddr(p[0])) == ipKey(netip.MustParseAddr(p[1])) {
			t.Errorf("%s and %s counted together", p[0], p[1])
		}
	}
}

// TestConnectionsPerIPBehindProxy: behind a trusted load balancer the
// limit counts the PROXY source, not the balancer.
func TestConnectionsPerIPBehindProxy(t *testing.T) {
	t.Parallel()
	e := setup(t, "sqlite", func(c *Config) {
		c.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		c.MaxConnectionsPerIP = 2
	})
	greet := func(src string) string {
		nc, err := net.Dial("tcp", e.srv.SubmissionAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		if _, err := fmt.Fprintf(nc, "PROXY TCP4 %s 127.0.0.1 40000 587\r\n", src); err != nil {
			t.Fatal(err)
		}
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(nc).ReadString('\n')
		return line
	}
	for i, tc := range []struct{ src, want string }{
		{"203.0.113.9", "220 "}, {"203.0.113.9", "220 "}, {"203.0.113.9", "421 4.7.0 "},
		{"203.0.113.10", "220 "}, // all came from 127.0.0.1
	} {
		if got := greet(tc.src); !strings.HasPrefix(got, tc.want) {
			t.Fatalf("connection %d from %s greeted %q, want %q", i, tc.src, got, tc.want)
		}
	}
}
