package smtpd

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/emersion/go-smtp"
)

// dataProbe is a bare go-smtp server whose sessions read DATA with given
// buffer sizes, through go-smtp's reader or through fastData, and report
// every Read.
type dataProbe struct {
	fast  bool
	sizes []int // buffer sizes of successive reads, the last repeating
	reads chan string
	typ   chan string // the type fastData returned
}

func (p *dataProbe) NewSession(*smtp.Conn) (smtp.Session, error) { return probeSession{p}, nil }

type probeSession struct{ p *dataProbe }

func (probeSession) Reset()                               {}
func (probeSession) Logout() error                        { return nil }
func (probeSession) Mail(string, *smtp.MailOptions) error { return nil }
func (probeSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s probeSession) Data(r io.Reader) error             { return s.p.data(r) }

func (p *dataProbe) data(r io.Reader) error {
	if p.fast {
		r = fastData(r)
	}
	if p.typ != nil {
		p.typ <- fmt.Sprintf("%T", r)
	}
	var log strings.Builder
	defer func() { p.reads <- log.String() }()
	for i := 0; ; i++ {
		buf := make([]byte, p.sizes[min(i, len(p.sizes)-1)])
		n, err := r.Read(buf)
		fmt.Fprintf(&log, "%q %v\n", buf[:n], err)
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// pipeListener hands go-smtp the server ends of net.Pipe connections:
// unlike a socket, a pipe loses nothing a closing server had not read,
// so a transcript is the same every time.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "pipe"} }

// startProbe serves p with the given message limit.
func startProbe(t testing.TB, p *dataProbe, maxBytes int64) *pipeListener {
	t.Helper()
	srv := smtp.NewServer(p)
	srv.Domain = "probe.test"
	srv.MaxMessageBytes = maxBytes
	srv.MaxLineLength = 0
	l := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l
}

// probeTranscript sends one message whose DATA section is data (followed
// by an end that always ends it, a NOOP and QUIT), writing chunk bytes at
// a time, and returns the server's replies and the session's reads.
func probeTranscript(t testing.TB, l *pipeListener, p *dataProbe, data []byte, chunk int) string {
	t.Helper()
	c, s := net.Pipe()
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	l.conns <- s
	// Whatever state data leaves the machine in, "\r\n\r\n.\r\n" ends
	// it. All is sent at once, as a pipelining client may: the bytes after
	// the end are the next commands.
	msg := "EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" +
		string(data) + "\r\n\r\n.\r\nNOOP\r\nQUIT\r\n"
	go func() {
		for b := []byte(msg); len(b) > 0; {
			n := min(chunk, len(b))
			if _, err := c.Write(b[:n]); err != nil {
				return // the server hung up early: its replies say why
			}
			b = b[n:]
		}
	}()
	replies, err := io.ReadAll(c) // until the server closes
	if err != nil {
		t.Fatalf("reading the replies: %v (so far %q)", err, replies)
	}
	out := string(replies)
	// Data reports before go-smtp replies: every Data call is in.
	for {
		select {
		case r := <-p.reads:
			out += "reads:\n" + r
		default:
			return out
		}
	}
}

// compareData checks that fastData reads data exactly as go-smtp's reader
// does: the same reads, the same replies, the same next command.
func compareData(t *testing.T, data []byte, sizes []int, chunk int, maxBytes int64) {
	t.Helper()
	slow := &dataProbe{sizes: sizes, reads: make(chan string, 64)}
	fast := &dataProbe{fast: true, sizes: sizes, reads: make(chan string, 64)}
	want := probeTranscript(t, startProbe(t, slow, maxBytes), slow, data, chunk)
	got := probeTranscript(t, startProbe(t, fast, maxBytes), fast, data, chunk)
	if got != want {
		t.Fatalf("data %q, read sizes %v, written %d bytes at a time, limit %d:\ngo-smtp:\n%s\nfastData:\n%s",
			data, sizes, chunk, maxBytes, want, got)
	}
}

// TestFastDataLayout fails when go-smtp's DATA reader is no longer the
// one fastData was written for (after an upgrade): then every message is
// read a byte per call again. Re-check data.go against datareader.go.
func TestFastDataLayout(t *testing.T) {
	// Another reader first (BDAT's, say) must not keep DATA's from being
	// learnt: it is left alone.
	dataLayout.Store(nil)
	sr := strings.NewReader("x")
	if got := fastData(sr); got != io.Reader(sr) {
		t.Fatalf("fastData wrapped a %T", sr)
	}
	p := &dataProbe{fast: true, sizes: []int{4096}, reads: make(chan string, 64), typ: make(chan string, 1)}
	tr := probeTranscript(t, startProbe(t, p, 0), p, []byte("Subject: x\r\n\r\nhello"), 1<<20)
	if typ := <-p.typ; typ != "*smtpd.fastDataReader" {
		t.Fatalf("fastData gave %s for go-smtp's DATA reader: its layout changed (see smtpd/datareader.go)", typ)
	}
	if !strings.Contains(tr, `"Subject: x\r\n\r\nhello\r\n\r\n" EOF`) || !strings.Contains(tr, "250 2.0.0 OK") {
		t.Fatalf("transcript:\n%s", tr)
	}
	if got := fastData(sr); got != io.Reader(sr) {
		t.Fatalf("fastData wrapped a %T after a DATA reader", sr)
	}
}

// TestFastDataSameAsGoSMTP runs the cases where dot-stuffing, line ends
// and the end marker meet buffer and read boundaries through both
// readers, with and without a size limit.
func TestFastDataSameAsGoSMTP(t *testing.T) {
	cases := []string{
		"",
		"plain\r\nlines\r\n",
		"..leading dot\r\n.\r\n",       // stuffed dot, then the end in the middle
		".\r\n",                        // the end at once
		"a\r\n.\rb\r\n",                // ".\r" then not LF
		"a\r\n.x\r\n",                  // a dot before text
		"a\r\r\n.\r\n",                 // CR CR LF: not a line start
		"a\n.\r\nb",                    // bare LF before the dot
		"a\r\n..\r\n..\r\n.",           // lines of stuffed dots
		"\r\n.\r\nMAIL FROM:<x@y>\r\n", // the end, then a command
		strings.Repeat("x", 5000) + "\r\n." + strings.Repeat("y", 5000),
		strings.Repeat("line of text\r\n", 2000),
	}
	sizes := [][]int{{1}, {2}, {3}, {7}, {4096}, {32 << 10}, {1, 5, 300, 2}}
	for _, lim := range []int64{0, 10, 4097} {
		for _, c := range cases {
			for i, s := range sizes {
				compareData(t, []byte(c), s, []int{1 << 20, 1, 3, 100, 4095}[i%5], lim)
			}
		}
	}
	// Random messages over the characters that matter.
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte(".\r\nab")
	for range 200 {
		data := make([]byte, rng.IntN(9000))
		for i := range data {
			data[i] = alphabet[rng.IntN(len(alphabet))]
		}
		compareData(t, data, []int{1 + rng.IntN(5000)}, 1+rng.IntN(6000), []int64{0, 0, int64(rng.IntN(9000))}[rng.IntN(3)])
	}
}

// FuzzFastData compares fastData with go-smtp's reader on any DATA.
func FuzzFastData(f *testing.F) {
	f.Add([]byte("a\r\n..b\r\n.\r\n"), uint16(3), uint16(7), uint16(0))
	f.Add([]byte(".\r.\n\r\n."), uint16(1), uint16(1), uint16(5))
	f.Fuzz(func(t *testing.T, data []byte, size, chunk, limit uint16) {
		compareData(t, data, []int{1 + int(size)%8192}, 1+int(chunk), int64(limit))
	})
}

// BenchmarkDataReader reads a 10 KiB message through go-smtp's reader and
// through fastData.
func BenchmarkDataReader(b *testing.B) {
	line := strings.Repeat("x", 78) + "\r\n"
	data := []byte(strings.Repeat(line, 10<<10/len(line)))
	for _, fast := range []bool{false, true} {
		b.Run(map[bool]string{false: "go-smtp", true: "fast"}[fast], func(b *testing.B) {
			p := &dataProbe{fast: fast, sizes: []int{32 << 10}, reads: make(chan string, 64)}
			addr := startProbe(b, p, 0)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				probeTranscript(b, addr, p, data, 1<<20)
			}
		})
	}
}

// TestFastDataGoSMTPVersion pins the go-smtp whose data.go fastData
// mirrors. An upgrade may keep dataReader's fields and change its
// machine (emersion/go-smtp#312 rewrites it): re-read data.go against
// datareader.go, then move the pin.
func TestFastDataGoSMTPVersion(t *testing.T) {
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\s*github\.com/emersion/go-smtp v0\.25\.1\s*$`).Match(mod) {
		t.Fatal("go.mod no longer requires github.com/emersion/go-smtp v0.25.1: check its data.go against smtpd/datareader.go, then update this test")
	}
}

// scriptedConn is a connection that returns its steps' bytes, each step's
// error with its last byte (as a real connection may: data and a timeout
// or EOF in one read).
type scriptedConn struct{ steps []scriptStep }

type scriptStep struct {
	data string
	err  error
}

func (s *scriptedConn) Read(b []byte) (int, error) {
	if len(s.steps) == 0 {
		return 0, io.EOF
	}
	st := &s.steps[0]
	n := copy(b, st.data)
	st.data = st.data[n:]
	if st.data != "" {
		return n, nil
	}
	err := st.err
	s.steps = s.steps[1:]
	return n, err
}

// newGoSMTPDataReader builds go-smtp's own DATA reader over br (as its
// newDataReader does, with limit > 0 as MaxMessageBytes), through the
// layout fastData learnt.
func newGoSMTPDataReader(l *dataReaderLayout, br *bufio.Reader, limit int64) (io.Reader, *bool) {
	v := reflect.New(l.typ.Elem())
	p := v.UnsafePointer()
	*(**bufio.Reader)(unsafe.Add(p, l.offR)) = br
	limited := (*bool)(unsafe.Add(p, l.offLim))
	if limit > 0 {
		*limited = true
		*(*int64)(unsafe.Add(p, l.offN)) = limit
	}
	return v.Interface().(io.Reader), limited
}

// readAs reads r as a session and then go-smtp would: reads of the given
// sizes (0 included), then at drain go-smtp's drain after Data returns
// (the limit off, the rest discarded); then what is left for the next
// command.
func readAs(r io.Reader, limited *bool, br *bufio.Reader, sizes []int, drain int) string {
	var out strings.Builder
	for i := range 50 {
		if i == drain {
			*limited = false
			n, err := io.Copy(io.Discard, r)
			fmt.Fprintf(&out, "drained %d %v\n", n, err)
			break
		}
		buf := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(buf)
		fmt.Fprintf(&out, "%q %v\n", buf[:n], err)
	}
	rest, err := io.ReadAll(br)
	fmt.Fprintf(&out, "left %q %v\n", rest, err)
	return out.String()
}

// TestFastDataErrorsAsGoSMTP compares fastData with go-smtp's own reader
// where a server cannot take them: a connection that fails mid-message
// (a timeout, an early EOF, go-smtp's line limit), reads of zero bytes,
// reads after the end, a size limit, and go-smtp's drain at any point.
func TestFastDataErrorsAsGoSMTP(t *testing.T) {
	p := &dataProbe{fast: true, sizes: []int{4096}, reads: make(chan string, 64)}
	probeTranscript(t, startProbe(t, p, 0), p, []byte("x"), 1<<20) // learn the layout
	l := dataLayout.Load()
	if l == nil {
		t.Fatal("no layout learnt from go-smtp's DATA reader")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte(".\r\nab")
	errs := []error{nil, nil, nil, os.ErrDeadlineExceeded, io.EOF, smtp.ErrTooLongLine}
	for range 20000 {
		var steps []scriptStep
		for k := rng.IntN(6); k >= 0; k-- {
			d := make([]byte, rng.IntN(40))
			for i := range d {
				d[i] = alphabet[rng.IntN(len(alphabet))]
			}
			steps = append(steps, scriptStep{string(d), errs[rng.IntN(len(errs))]})
		}
		bufSize := 16 + rng.IntN(30) // bufio's smallest is 16
		sizes := []int{rng.IntN(20), 1 + rng.IntN(20), rng.IntN(5)}
		limit := []int64{0, 0, int64(rng.IntN(60))}[rng.IntN(3)]
		drain := rng.IntN(12) - 1 // -1: never

		br := bufio.NewReaderSize(&scriptedConn{steps: slices.Clone(steps)}, bufSize)
		r, limited := newGoSMTPDataReader(l, br, limit)
		want := readAs(r, limited, br, sizes, drain)

		br = bufio.NewReaderSize(&scriptedConn{steps: slices.Clone(steps)}, bufSize)
		r, limited = newGoSMTPDataReader(l, br, limit)
		fr := fastData(r)
		if _, ok := fr.(*fastDataReader); !ok {
			t.Fatalf("fastData gave a %T", fr)
		}
		if got := readAs(fr, limited, br, sizes, drain); got != want {
			t.Fatalf("connection %+v, buffer %d, reads %v, limit %d, drain at %d:\ngo-smtp:\n%s\nfastData:\n%s",
				steps, bufSize, sizes, limit, drain, want, got)
		}
	}
}
