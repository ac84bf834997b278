package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smtpgw/smtpgw/config"
)

const benchUsage = `usage: smtpgw bench --addr HOST:PORT [--key-file FILE] [--conns N] [--messages N] [--size BYTES]
                    [--tls starttls|implicit|none] [--ca FILE] [--insecure-skip-verify] [--username U]
                    [--from ADDR] [--to ADDR] [--chunking] [--rate MSGS_PER_S] [--cpuprofile FILE]
                    [--no-auth]
--rate R is an open-loop load: message i is due i/R seconds after the start,
whichever session is free sends it, and its latency counts from when it was
due, so a server that stalls shows in p99 even though the sessions wait
(no coordinated omission); msgs_per_s is the rate achieved. --rate 0 (the
default) sends as fast as the sessions can, each message timed from its MAIL
or, when the server offers PIPELINING, from the 250 of the session's
message before: its envelope is written with that message's end of data.
A paced run uses one processor (GOMAXPROCS=1, unless the environment sets
GOMAXPROCS): idle between messages, the client would otherwise wake a
second thread to spin for work at every reply.
A %d in --to is replaced by the message's number (from 1), so that each
message has a recipient of its own: --to 'r%d@example.net'.
The API key (grant smtp/inject) is read from --key-file FILE, else from the
SMTPGW_KEY environment variable. --key KEY also works but is discouraged:
every user of the machine sees a command line's arguments (ps).
--no-auth sends without AUTH and needs no key: for measuring another server
with the same client and load, such as a Postfix that relays for localhost
(scripts/bench.sh paces its Postfix baseline so).`

// benchOptions is one load run: Messages messages of Size bytes over Conns
// sessions, each authenticating once and sending many messages.
type benchOptions struct {
	Addr       string
	Key        string
	Username   string
	NoAuth     bool // send without AUTH (another server, relaying for the client's address)
	Conns      int
	Messages   int
	Size       int
	TLS        string // "starttls", "implicit" or "none"
	TLSConfig  *tls.Config
	Chunking   bool // send with BDAT when the server offers CHUNKING
	From, To   string
	Timeout    time.Duration
	Rate       float64        // messages per second in all; 0: as fast as possible
	OnProgress func(done int) // optional
}

// benchResult is what a run measured.
type benchResult struct {
	Sent, Failed int
	FirstError   string
	Elapsed      time.Duration   // the start until the last reply
	Latencies    []time.Duration // per message, MAIL (paced: the time it was due) to the 250 after DATA
	MaxLag       time.Duration   // paced: the most a message's MAIL went out after it was due
	CPU          time.Duration   // CPU the load generator itself used (getrusage)
}

// cpuPerMessage is the load generator's CPU per message sent.
func (r benchResult) cpuPerMessage() time.Duration {
	if r.Sent == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Sent)
}

func (r benchResult) rate() float64 { return float64(r.Sent) / r.Elapsed.Seconds() }

func (r benchResult) percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	l := slices.Clone(r.Latencies)
	slices.Sort(l)
	return l[min(len(l)-1, int(float64(len(l))*p))]
}

// benchKey returns the API key from --key-file, --key or SMTPGW_KEY, in
// that order; one of them must give one.
func benchKey(flagKey, keyFile string, e env) (string, error) {
	switch {
	case keyFile != "" && flagKey != "":
		return "", usagef("bench: give the key once: --key-file or --key, not both")
	case keyFile != "":
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return "", fmt.Errorf("bench: read --key-file: %w", err)
		}
		if k := strings.TrimSpace(string(b)); k != "" {
			return k, nil
		}
		return "", usagef("bench: --key-file %s is empty: write the API key in it", keyFile)
	case flagKey != "":
		return flagKey, nil
	}
	for _, kv := range e.environ {
		if v, ok := strings.CutPrefix(kv, config.KeyEnv+"="); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", usagef("bench: no API key: put one in a file for --key-file FILE, or in the %s environment variable "+
		"(create one with: smtpgw keys create --label bench --grant smtp/inject)", config.KeyEnv)
}

func cmdBench(ctx context.Context, args []string, e env) error {
	fs, cfgPath := newFlags("bench")
	o := benchOptions{}
	fs.StringVar(&o.Addr, "addr", "127.0.0.1:2525", "gateway submission address")
	fs.StringVar(&o.Key, "key", "", "API key with smtp/inject; discouraged: ps shows it (use --key-file or SMTPGW_KEY)")
	keyFile := fs.String("key-file", "", "file holding the API key (smtp/inject)")
	fs.StringVar(&o.Username, "username", "SMTP_Injection", "AUTH username")
	fs.IntVar(&o.Conns, "conns", 20, "parallel SMTP sessions")
	fs.IntVar(&o.Messages, "messages", 5000, "messages to send in all")
	fs.IntVar(&o.Size, "size", 10240, "message size in bytes")
	fs.StringVar(&o.TLS, "tls", "starttls", "starttls, implicit or none")
	insecure := fs.Bool("insecure-skip-verify", false, "do not verify the gateway's certificate")
	caFile := fs.String("ca", "", "PEM certificate(s) to trust besides the system's (default: the gateway's self-signed data_dir/tls/cert.pem when it has no smtp.tls_cert)")
	fs.StringVar(&o.From, "from", "bench@example.com", "envelope sender and From:")
	fs.StringVar(&o.To, "to", "sink@example.net", "envelope recipient; a %d in it is replaced by the message's number, so each message has a recipient of its own")
	fs.BoolVar(&o.Chunking, "chunking", false, "send with BDAT (RFC 3030) when the server offers CHUNKING")
	fs.Float64Var(&o.Rate, "rate", 0, "messages per second in all, paced open-loop over the sessions (0: as fast as possible)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile (go tool pprof) of the load client to `FILE`")
	fs.BoolVar(&o.NoAuth, "no-auth", false, "send without AUTH, needing no key (to measure another server, such as Postfix relaying for localhost)")
	pos, err := parse(fs, benchUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("bench: unexpected argument %q\n%s", pos[0], benchUsage)
	}
	if o.NoAuth {
		if o.Key != "" || *keyFile != "" {
			return usagef("bench: --no-auth sends no key: drop --key or --key-file")
		}
	} else if o.Key, err = benchKey(o.Key, *keyFile, e); err != nil {
		return err
	}
	switch {
	case o.Conns < 1 || o.Messages < 1 || o.Size < 200:
		return usagef("bench: --conns and --messages must be at least 1 and --size at least 200")
	case !(o.Rate >= 0) || math.IsInf(o.Rate, 0):
		return usagef("bench: --rate must be a number of messages per second, 0 for as fast as possible, not %v", o.Rate)
	case o.TLS != "starttls" && o.TLS != "implicit" && o.TLS != "none":
		return usagef("bench: --tls must be starttls, implicit or none, not %q", o.TLS)
	case strings.Count(o.To, "%") > 1 || strings.Contains(o.To, "%") && !strings.Contains(o.To, "%d"):
		return usagef("bench: --to %q: the only %% it may hold is one %%d (the message's number)", o.To)
	}
	host, _, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return usagef("bench: --addr %q is not HOST:PORT", o.Addr)
	}
	o.TLSConfig = &tls.Config{ServerName: host, InsecureSkipVerify: *insecure, MinVersion: tls.VersionTLS12}
	if *caFile == "" && !*insecure {
		// The gateway of this configuration with its self-signed
		// certificate: trust that certificate.
		if cfg, err := loadConfig(*cfgPath, e); err == nil && cfg.SMTP.TLSCert == "" {
			if f := filepath.Join(cfg.DataDir, "tls", "cert.pem"); fileExists(f) {
				*caFile = f
			}
		}
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return fmt.Errorf("bench: read --ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return usagef("bench: --ca %s holds no PEM certificate", *caFile)
		}
		o.TLSConfig.RootCAs = pool
	}
	if o.Rate > 0 && !slices.ContainsFunc(e.environ, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") }) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	}
	if *cpuprofile != "" {
		stop, err := startCPUProfile(*cpuprofile)
		if err != nil {
			return fmt.Errorf("bench: --cpuprofile: %w", err)
		}
		defer stop()
	}
	res := runBench(ctx, o)
	fmt.Fprintf(e.stdout, "smtpgw bench: N=%d size=%d sessions=%d rate=%s sent=%d failed=%d elapsed=%s msgs_per_s=%.0f p50=%s p99=%s max=%s max_start_lag=%s cpu_us_per_msg=%d\n",
		o.Messages, o.Size, o.Conns, strconv.FormatFloat(o.Rate, 'f', -1, 64), res.Sent, res.Failed,
		res.Elapsed.Round(time.Millisecond), res.rate(),
		res.percentile(0.50).Round(10*time.Microsecond), res.percentile(0.99).Round(10*time.Microsecond),
		res.percentile(1).Round(10*time.Microsecond), res.MaxLag.Round(10*time.Microsecond),
		res.cpuPerMessage().Microseconds())
	if res.Failed > 0 {
		return fmt.Errorf("bench: %d of %d messages failed, first: %s", res.Failed, o.Messages, res.FirstError)
	}
	return nil
}

// fileExists reports whether path names an existing file.
func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir()
}

// runBench sends o.Messages messages over o.Conns sessions. A session that
// fails is redialled, so one error costs one message.
//
// With o.Rate the load is open-loop: message i is due at start + i/Rate,
// taken by whichever session is free, sent no earlier than due, and timed
// from when it was due, not from when a busy session got to it. A server
// that stalls for a second thus costs every message due in that second its
// wait, as it would cost real clients, where a closed loop would time only
// the few messages in flight. The sessions are dialled before the start so
// that the schedule does not include dialling them.
func runBench(ctx context.Context, o benchOptions) benchResult {
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	body := benchMessage(o.From, o.To, o.Size)
	var next atomic.Int64
	var mu sync.Mutex
	res := benchResult{Latencies: make([]time.Duration, 0, o.Messages)}
	// Dial every session first; one that fails is dialled again (and its
	// failure counted) when it comes to send.
	conns := make([]*benchConn, o.Conns)
	var dials sync.WaitGroup
	for i := range conns {
		dials.Go(func() { conns[i], _ = benchDial(o, body) })
	}
	dials.Wait()
	cpu0 := processCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			defer func() {
				if c != nil {
					c.quit()
				}
			}()
			var timer *time.Timer
			// claimed is a message this session took before sending the
			// one in hand (its envelope may be on its way: send's ahead).
			claimed := int64(-1)
			for ctx.Err() == nil {
				i := claimed
				if i < 0 {
					i = next.Add(1) - 1
				}
				claimed = -1
				if int(i) >= o.Messages {
					break
				}
				var due time.Time
				var lag time.Duration
				if o.Rate > 0 {
					due = start.Add(time.Duration(float64(i) * float64(time.Second) / o.Rate))
					if wait := time.Until(due); wait > 0 {
						if timer == nil {
							timer = time.NewTimer(wait)
						} else {
							timer.Reset(wait)
						}
						select {
						case <-timer.C:
						case <-ctx.Done():
							return
						}
					} else {
						lag = -wait
					}
				}
				var err error
				if c == nil {
					c, err = benchDial(o, body)
				}
				var lat time.Duration
				if err == nil {
					t0 := time.Now()
					if due.IsZero() {
						due = t0
					}
					// At full speed the next message's envelope goes with
					// this one's end of data (RFC 2920: content may start a
					// group): the server's replies to both come back in one
					// read, without a round trip of their own. Its time still
					// counts from this message's 250, as when it was sent then.
					var after int64
					if o.Rate == 0 {
						if j := next.Add(1) - 1; int(j) < o.Messages {
							claimed, after = j, j+1
						}
					}
					err = c.send(i+1, after)
					lat = time.Since(due)
				}
				mu.Lock()
				if err != nil {
					res.Failed++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
					if c != nil {
						_ = c.conn.Close()
						c = nil
					}
				} else {
					res.Sent++
					res.Latencies = append(res.Latencies, lat)
				}
				res.MaxLag = max(res.MaxLag, lag)
				done := res.Sent + res.Failed
				mu.Unlock()
				if o.OnProgress != nil {
					o.OnProgress(done)
				}
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.CPU = processCPU() - cpu0
	return res
}

// processCPU is the CPU time (user and system) this process used so far,
// zero where getrusage is not available.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchConn is one authenticated SMTP session of the load generator. It
// speaks SMTP itself rather than through go-smtp's client so that a message
// costs the client as little as possible: the envelope is one pipelined
// write (RFC 2920) when the server offers PIPELINING, the message, dot-stuffed
// once in advance, one more write, with the next message's envelope when
// there is one at full speed (content may start a group), so a message
// costs one write (or, with CHUNKING, envelope and message go in a single
// BDAT write, RFC 3030).
type benchConn struct {
	conn     net.Conn
	r        *textproto.Reader
	envelope []byte // MAIL, RCPT and DATA (or BDAT LAST), pipelined
	// With a --to holding %d, envelope is rebuilt for each message:
	// envHead, the recipient (toFmt with the message's number), envTail.
	toFmt, envHead, envTail string
	data                    []byte // the dot-stuffed message and its end marker (DATA only)
	out                     []byte // the data and the next envelope, written together
	ahead                   bool   // the next message's envelope is written, its replies unread
	pipeline                bool   // the server offers PIPELINING
	chunking                bool   // send with BDAT
	timeout                 time.Duration
}

// benchDial opens one session, authenticated unless o.NoAuth, ready to
// send body.
func benchDial(o benchOptions, body []byte) (*benchConn, error) {
	var nc net.Conn
	var err error
	d := &net.Dialer{Timeout: o.Timeout}
	if o.TLS == "implicit" {
		nc, err = tls.DialWithDialer(d, "tcp", o.Addr, o.TLSConfig)
	} else {
		nc, err = d.Dial("tcp", o.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", o.Addr, err)
	}
	c := &benchConn{conn: nc, timeout: o.Timeout}
	c.r = textproto.NewReader(bufio.NewReader(nc))
	fail := func(step string, err error) (*benchConn, error) {
		_ = nc.Close()
		return nil, fmt.Errorf("%s: %w", step, err)
	}
	if _, err := c.reply(220); err != nil {
		return fail("greeting", err)
	}
	ext, err := c.ehlo()
	if err != nil {
		return fail("EHLO", err)
	}
	if o.TLS == "starttls" {
		if _, ok := ext["STARTTLS"]; !ok {
			return fail("STARTTLS", errors.New("the server does not offer STARTTLS"))
		}
		if _, err := c.cmd(220, "STARTTLS\r\n"); err != nil {
			return fail("STARTTLS", err)
		}
		tc := tls.Client(nc, o.TLSConfig)
		if err := tc.Handshake(); err != nil {
			return fail("TLS handshake", err)
		}
		c.conn = tc
		c.r = textproto.NewReader(bufio.NewReader(tc))
		if ext, err = c.ehlo(); err != nil {
			return fail("EHLO", err)
		}
	}
	if !o.NoAuth {
		plain := base64.StdEncoding.EncodeToString([]byte("\x00" + o.Username + "\x00" + o.Key))
		if _, err := c.cmd(235, "AUTH PLAIN "+plain+"\r\n"); err != nil {
			return fail("AUTH", err)
		}
	}
	_, c.pipeline = ext["PIPELINING"]
	_, chunking := ext["CHUNKING"]
	c.chunking = chunking && o.Chunking && c.pipeline
	c.envHead = fmt.Sprintf("MAIL FROM:<%s> SIZE=%d\r\nRCPT TO:<", o.From, len(body))
	if c.chunking {
		c.envTail = fmt.Sprintf(">\r\nBDAT %d LAST\r\n", len(body)) + string(body)
	} else {
		c.envTail = ">\r\nDATA\r\n"
		c.data = append(dotStuff(body), ".\r\n"...)
	}
	if strings.Contains(o.To, "%d") {
		c.toFmt = o.To
	} else {
		c.envelope = []byte(c.envHead + o.To + c.envTail)
	}
	return c, nil
}

// ehlo sends EHLO and returns the extensions offered, keyed by name.
func (c *benchConn) ehlo() (map[string]string, error) {
	msg, err := c.cmd(250, "EHLO bench.smtpgw\r\n")
	if err != nil {
		return nil, err
	}
	ext := map[string]string{}
	for _, l := range strings.Split(msg, "\n")[1:] {
		k, v, _ := strings.Cut(l, " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext, nil
}

// cmd writes line and reads the reply, which must have code want.
func (c *benchConn) cmd(want int, line string) (string, error) {
	if err := c.write([]byte(line)); err != nil {
		return "", err
	}
	return c.reply(want)
}

func (c *benchConn) write(b []byte) error {
	_ = c.conn.SetDeadline(time.Now().Add(c.timeout))
	_, err := c.conn.Write(b)
	return err
}

// reply reads one reply, which must have code want.
func (c *benchConn) reply(want int) (string, error) {
	_ = c.conn.SetDeadline(time.Now().Add(c.timeout))
	code, msg, err := c.r.ReadResponse(want)
	if err != nil && code != 0 {
		return msg, fmt.Errorf("%d %s", code, msg)
	}
	return msg, err
}

// envelopeOf returns the envelope of message n (the same for every
// message unless --to holds %d).
func (c *benchConn) envelopeOf(n int64) []byte {
	if c.toFmt == "" {
		return c.envelope
	}
	e := fmt.Appendf([]byte(c.envHead), c.toFmt, n)
	return append(e, c.envTail...)
}

// send sends message n and waits for the server's answer to it. With
// PIPELINING and DATA, a following message (after > 0) has its envelope
// written with n's end of data, so the next send reads its replies without
// writing first; the session then holds it (ahead) until that send.
func (c *benchConn) send(n, after int64) error {
	if !c.pipeline {
		lines := strings.SplitAfter(string(c.envelopeOf(n)), "\r\n")
		for i, want := range []int{250, 250, 354} {
			if _, err := c.cmd(want, lines[i]); err != nil {
				return err
			}
		}
	} else {
		if !c.ahead {
			if err := c.write(c.envelopeOf(n)); err != nil {
				return err
			}
		}
		c.ahead = false
		last := 354
		if c.chunking {
			last = 250
		}
		for _, want := range []int{250, 250, last} {
			if _, err := c.reply(want); err != nil {
				return err
			}
		}
		if c.chunking {
			return nil
		}
	}
	out := c.data
	if after > 0 && c.pipeline {
		out = append(append(c.out[:0], c.data...), c.envelopeOf(after)...)
		c.out = out
	}
	if err := c.write(out); err != nil {
		return err
	}
	c.ahead = len(out) > len(c.data)
	_, err := c.reply(250)
	return err
}

// quit ends the session politely. A session holding an envelope sent
// ahead (a send that failed or was not made) is closed instead: the server
// discards a transaction whose data never came.
func (c *benchConn) quit() {
	if c.ahead {
		_ = c.conn.Close()
		return
	}
	if _, err := c.cmd(221, "QUIT\r\n"); err != nil {
		_ = c.conn.Close()
		return
	}
	_ = c.conn.Close()
}

// dotStuff doubles a dot at the start of every line (RFC 5321 4.5.2) and
// ends the message with CRLF.
func dotStuff(body []byte) []byte {
	out := make([]byte, 0, len(body)+len(body)/64+2)
	bol := true
	for _, b := range body {
		if bol && b == '.' {
			out = append(out, '.')
		}
		out = append(out, b)
		bol = b == '\n'
	}
	if !bol {
		out = append(out, '\r', '\n')
	}
	return out
}

// benchMessage builds a message of about size bytes with random text lines;
// one line starts with a dot, so the server's dot-unstuffing is exercised.
func benchMessage(from, to string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: smtpgw bench\r\nMessage-ID: <%d.bench@smtpgw>\r\nDate: %s\r\n\r\n.a line that starts with a dot\r\n",
		from, to, rand.Int64(), time.Now().Format(time.RFC1123Z))
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	for b.Len() < size {
		n := min(76, size-b.Len())
		if n < 3 {
			n = 3
		}
		line := make([]byte, n-2)
		for i := range line {
			line[i] = letters[rand.IntN(len(letters))]
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}
