package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpgw/smtpgw/store"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	initial, max := time.Minute, time.Hour
	cases := []struct {
		attempts int
		base     time.Duration
	}{
		{1, time.Minute}, {2, 2 * time.Minute}, {3, 4 * time.Minute}, {6, 32 * time.Minute},
		{7, time.Hour}, {50, time.Hour},
	}
	for _, c := range cases {
		for range 50 {
			d := backoff(initial, max, c.attempts)
			lo, hi := time.Duration(float64(c.base)*0.8), time.Duration(float64(c.base)*1.2)
			if d < lo || d > hi {
				t.Fatalf("backoff(attempts=%d) = %v, want within [%v, %v]", c.attempts, d, lo, hi)
			}
		}
	}
}

func TestParseNotify(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"":                      "",
		"NEVER":                 "NEVER",
		"never":                 "NEVER",
		"SUCCESS,FAILURE":       "SUCCESS,FAILURE",
		"delay , failure":       "DELAY,FAILURE",
		"NEVER,SUCCESS":         "", // invalid combination: dropped
		"BOGUS,FAILURE":         "FAILURE",
		"SUCCESS,DELAY,FAILURE": "SUCCESS,DELAY,FAILURE",
	}
	for in, want := range cases {
		var got []string
		for _, v := range parseNotify(in) {
			got = append(got, string(v))
		}
		if strings.Join(got, ",") != want {
			t.Errorf("parseNotify(%q) = %v, want %q", in, got, want)
		}
	}
	if !notifies("", "FAILURE") || notifies("", "DELAY") || notifies("NEVER", "FAILURE") || !notifies("DELAY", "DELAY") {
		t.Error("notifies: wrong defaults")
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err   error
		state string
		reply string
	}{
		{smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user"), store.StateBounced, "550 5.1.1 no such user"},
		{smtpErr(452, smtp.EnhancedCode{4, 5, 3}, "too many\nrecipients"), store.StateDeferred, "452 4.5.3 too many recipients"},
		{&smtp.SMTPError{Code: 554, EnhancedCode: smtp.NoEnhancedCode, Message: "go away"}, store.StateBounced, "554 go away"},
		{fmt.Errorf("write: %w", io.ErrUnexpectedEOF), store.StateDeferred, "451 4.4.1 write: unexpected EOF"},
		{context.DeadlineExceeded, store.StateDeferred, "451 4.4.2 timeout talking to remote server"},
		{&permanentError{reply: replyNullMX}, store.StateDeferred, replyNullMX}, // routes() decides bounces
	}
	for _, c := range cases {
		state, reply := classify(c.err)
		if state != c.state || reply != c.reply {
			t.Errorf("classify(%v) = %s %q, want %s %q", c.err, state, reply, c.state, c.reply)
		}
	}
}

func TestStatusOf(t *testing.T) {
	t.Parallel()
	if s := statusOf("550 5.1.1 no", '5', "5.0.0"); s != "5.1.1" {
		t.Errorf("got %s", s)
	}
	if s := statusOf("550 no code", '5', "5.0.0"); s != "5.0.0" {
		t.Errorf("got %s", s)
	}
	if s := statusOf("451 4.2.2 full", '5', "5.0.0"); s != "5.0.0" {
		t.Errorf("class mismatch: got %s", s)
	}
}

func TestFromDomain(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"alice@Example.COM":                  "example.com",
		"Alice <alice@example.com>":          "example.com",
		`"Smith, A" <a@x.test>, b@y.test`:    "x.test",
		"=?utf-8?q?J=C3=BCrgen?= <j@z.test>": "z.test",
		"broken <<a@w.test>":                 "w.test",
		"":                                   "",
		"no address here":                    "",
	}
	for in, want := range cases {
		if got := fromDomain(in); got != want {
			t.Errorf("fromDomain(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGenerateDKIMKey(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{"rsa", "ed25519"} {
		priv, pub, err := GenerateDKIMKey(alg)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if !bytes.HasPrefix(priv, []byte("-----BEGIN PRIVATE KEY-----")) {
			t.Errorf("%s: private key is not PKCS#8 PEM", alg)
		}
		if _, err := parseDKIMKey(priv); err != nil {
			t.Errorf("%s: parse generated key: %v", alg, err)
		}
		name, value := DKIMRecord(&store.Domain{Name: "example.com", Selector: "s1", Algorithm: alg, PublicKey: pub})
		if name != "s1._domainkey.example.com" || value != "v=DKIM1; k="+alg+"; p="+pub {
			t.Errorf("%s: record %s %s", alg, name, value)
		}
	}
	if _, _, err := GenerateDKIMKey("dsa"); err == nil {
		t.Error("unknown algorithm accepted")
	}
	if _, err := parseDKIMKey([]byte("not pem")); err == nil {
		t.Error("garbage key parsed")
	}
}

func TestBuildDSNStructure(t *testing.T) {
	t.Parallel()
	orig := &store.Claimed{MailFrom: "s@src.test", DSNEnvID: "env42", DSNRet: "HDRS", Subaccount: 3,
		CreatedAt: time.Date(2026, 11, 23, 20, 0, 0, 0, time.UTC)}
	body := []byte(testBody("s@src.test", "dsn"))
	now := time.Date(2026, 11, 23, 21, 0, 0, 0, time.UTC)
	m, err := buildDSN("relay.test", orig, []dsnRecipient{{
		address: "x@dest.test", action: actionFailed, status: "5.1.1", reply: "550 5.1.1 no such user",
		remoteMTA: "mx.dest.test", lastAttempt: now,
	}}, body, now)
	if err != nil {
		t.Fatal(err)
	}
	if m.MailFrom != "" || len(m.Recipients) != 1 || m.Recipients[0].Address != "s@src.test" ||
		m.Recipients[0].Domain != "src.test" || m.Subaccount != 3 || m.KeyID != "" {
		t.Errorf("DSN envelope: %+v", m)
	}
	if !bytes.Contains(m.Body, []byte("\r\nAuto-Submitted: auto-replied\r\n")) {
		t.Errorf("DSN lacks Auto-Submitted")
	}
	_, status, original := dsnReport(t, m.Body)
	for _, want := range []string{"Original-Envelope-Id: env42", "Arrival-Date: Mon, 23 Nov 2026 20:00:00 +0000",
		"Remote-MTA: dns; mx.dest.test", "Status: 5.1.1"} {
		if !strings.Contains(status, want) {
			t.Errorf("status part lacks %q:\n%s", want, status)
		}
	}
	if !strings.HasPrefix(original, "From: s@src.test\r\n") || strings.Contains(original, "Hello") {
		t.Errorf("headers part:\n%s", original)
	}
}

func TestSemaphores(t *testing.T) {
	t.Parallel()
	s := newSemaphores(2, map[string]int{smarthostDest: 3})
	ctx := context.Background()
	// The smarthost has its own number of slots: 3, saturated at 6.
	var rs []func()
	for i := 0; i < 3; i++ {
		r, err := s.acquire(ctx, smarthostDest)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	waiting := make([]*ticket, 3)
	for i := range waiting {
		waiting[i] = s.join(smarthostDest)
		if waiting[i].tryAcquire() {
			t.Fatalf("a 4th slot of the smarthost's 3")
		}
		if sat := s.saturated(); (i < 2) == slices.Contains(sat, smarthostDest) {
			t.Errorf("with %d users the smarthost saturated = %v, want it at 6", 4+i, sat)
		}
	}
	for _, w := range waiting {
		w.leave()
	}
	for _, r := range rs {
		r()
	}

	r1, err1 := s.acquire(ctx, "a")
	r2, err2 := s.acquire(ctx, "a")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.acquire(short, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("third acquire: %v, want deadline exceeded", err)
	}
	rb, err := s.acquire(ctx, "b")
	if err != nil {
		t.Fatalf("other key blocked: %v", err)
	}
	rb()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r, err := s.acquire(ctx, "a")
		if err != nil {
			t.Error(err)
			return
		}
		r()
	}()
	r1()
	wg.Wait()
	r2()
	s.mu.Lock()
	left := len(s.m)
	s.mu.Unlock()
	if left != 0 {
		t.Errorf("%d semaphores left after release, want 0", left)
	}
}

func TestGroupJobs(t *testing.T) {
	t.Parallel()
	c := func(id int64, msg, addr string) *store.Claimed {
		return &store.Claimed{Recipient: store.Recipient{ID: id, MessageID: msg, Address: addr, Domain: domainOf(addr)}}
	}
	jobs := groupJobs([]*store.Claimed{
		c(1, "m1", "a@x.test"), c(2, "m1", "b@X.test"), c(3, "m1", "c@y.test"), c(4, "m2", "d@x.test"),
	}, ModeMX, time.Now())
	if len(jobs) != 3 || len(jobs[0].rcpts) != 2 || jobs[0].dest != "x.test" || jobs[2].rcpts[0].ID != 4 {
		t.Fatalf("jobs: %+v", jobs)
	}
	// In smarthost mode a message is one job whatever its domains.
	sh := groupJobs([]*store.Claimed{c(1, "m1", "a@x.test"), c(2, "m1", "c@y.test"), c(3, "m2", "d@y.test")},
		ModeSmarthost, time.Now())
	if len(sh) != 2 || len(sh[0].rcpts) != 2 || sh[0].dest != smarthostDest || sh[1].dest != smarthostDest {
		t.Errorf("smarthost jobs: %+v, want one per message, destination smarthost", sh)
	}
}

// TestSemaphoresSaturated: a destination with 2n jobs holding or waiting
// for its n slots is saturated, and freed says when it no longer is.
func TestSemaphoresSaturated(t *testing.T) {
	t.Parallel()
	s := newSemaphores(2, nil)
	var ts []*ticket
	for range 4 {
		ts = append(ts, s.join("a"))
	}
	other := s.join("b")
	if !ts[0].tryAcquire() || !ts[1].tryAcquire() || ts[2].tryAcquire() {
		t.Fatal("tryAcquire: want the first two slots and no third")
	}
	if got := s.saturated(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("saturated = %v, want [a]", got)
	}
	select {
	case <-s.freed:
		t.Fatal("freed before any job left")
	default:
	}
	ts[3].leave() // a waiting job gives up: below 2n again
	select {
	case <-s.freed:
	default:
		t.Fatal("no freed signal when a dropped below saturation")
	}
	if got := s.saturated(); len(got) != 0 {
		t.Errorf("saturated = %v after a job left, want none", got)
	}
	// A waiter gets the slot a leaving holder gives back.
	done := make(chan error, 1)
	go func() { done <- ts[2].wait(context.Background()) }()
	ts[0].leave()
	if err := <-done; err != nil || !ts[2].held {
		t.Fatalf("waiter: %v, held %v", err, ts[2].held)
	}
	ts[0].leave() // twice is harmless
	for _, tk := range []*ticket{ts[1], ts[2], other} {
		tk.leave()
	}
	s.mu.Lock()
	left := len(s.m)
	s.mu.Unlock()
	if left != 0 {
		t.Errorf("%d semaphores left after every job left, want 0", left)
	}
}

// TestFlushConnOneWrite checks that flushConn sends what was written in
// one write, at the next read, and nothing before.
func TestFlushConnOneWrite(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	fc := newFlushConn(a)
	for _, s := range []string{"DATA-part-1 ", "part-2 ", ".\r\n"} {
		if _, err := fc.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 1024)
		n, _ := b.Read(buf) // net.Pipe: one Read gets exactly one Write
		got <- string(buf[:n])
		_, _ = b.Write([]byte("250 ok\r\n"))
	}()
	reply := make([]byte, 64)
	n, err := fc.Read(reply)
	if err != nil || string(reply[:n]) != "250 ok\r\n" {
		t.Fatalf("read %q, %v", reply[:n], err)
	}
	if s := <-got; s != "DATA-part-1 part-2 .\r\n" {
		t.Errorf("the peer's first read got %q, want everything written in one write", s)
	}
}

// TestCutShort: a claim that filled its limit asks for the rest of its last
// message only when that message has recipients the claim does not hold.
func TestCutShort(t *testing.T) {
	c := func(msg string, rcpts int) *store.Claimed {
		cl := &store.Claimed{Recipient: store.Recipient{MessageID: msg}}
		cl.Info.Recipients = rcpts
		return cl
	}
	for _, tc := range []struct {
		name    string
		claimed []*store.Claimed
		want    bool
	}{
		{"single-recipient messages", []*store.Claimed{c("a", 1), c("b", 1)}, false},
		{"last message whole", []*store.Claimed{c("a", 1), c("b", 2), c("b", 2)}, false},
		{"last message cut", []*store.Claimed{c("a", 1), c("b", 3), c("b", 3)}, true},
		{"count unknown (stored before it was kept)", []*store.Claimed{c("a", 0)}, true},
	} {
		if got := cutShort(tc.claimed); got != tc.want {
			t.Errorf("%s: cutShort = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestWriteBody: the body goes out dot-stuffed as textproto's DotWriter
// would send it, whatever its lines start with, and a body with a bare CR
// or LF goes through the DotWriter itself.
func TestWriteBody(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		"Subject: a\r\n\r\nhello\r\n",
		".starts with a dot\r\n..two\r\nmid.dle\r\n.\r\n",
		"Subject: a\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
		"no final line end",
		"",
		"\r\n",
		"bare\nLF\r\n.dot\r\n",
		"bare\rCR\r\n.dot\r\n",
		".\r\n",
	} {
		var want bytes.Buffer
		tw := textproto.NewWriter(bufio.NewWriter(&want))
		dw := tw.DotWriter()
		if _, err := dw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
		if err := dw.Close(); err != nil {
			t.Fatal(err)
		}

		// What go-smtp sends: our writes to the connection's buffer, then
		// its DotWriter's, of which only Close is used for a CRLF body.
		var got bytes.Buffer
		gw := textproto.NewWriter(bufio.NewWriter(&got))
		gdw := gw.DotWriter()
		if err := writeBody(&got, gdw, []byte(body)); err != nil {
			t.Fatal(err)
		}
		if err := gdw.Close(); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("body %q:\nsent %q\nwant %q", body, got.String(), want.String())
		}
		// What the pipelined transaction sends: the same bytes.
		var piped bytes.Buffer
		if err := writeData(&piped, []byte(body)); err != nil {
			t.Fatal(err)
		}
		if piped.String() != want.String() {
			t.Errorf("body %q pipelined:\nsent %q\nwant %q", body, piped.String(), want.String())
		}
	}
}

func TestCRLFOnly(t *testing.T) {
	for _, c := range []struct {
		in   string
		want bool
	}{
		{"", true},
		{"no line end", true},
		{"a\r\nb\r\n", true},
		{"\r\n\r\n", true},
		{"a\nb\r\n", false},   // bare LF
		{"a\rb\r\n", false},   // bare CR
		{"\na", false},        // LF first
		{"a\r", false},        // CR last
		{"a\n\rb", false},     // LF CR, as many of each
		{"a\r\r\n\nb", false}, // CR CRLF LF
	} {
		if got := crlfOnly([]byte(c.in)); got != c.want {
			t.Errorf("crlfOnly(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}
