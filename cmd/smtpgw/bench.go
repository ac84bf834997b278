package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

const benchUsage = `usage: smtpgw bench --addr HOST:PORT --key KEY [--conns N] [--messages N] [--size BYTES]
                    [--tls starttls|implicit|none] [--insecure-skip-verify] [--username U]
                    [--from ADDR] [--to ADDR] [--key-file FILE]`

// benchOptions is one load run: Messages messages of Size bytes over Conns
// sessions, each authenticating once and sending many messages.
type benchOptions struct {
	Addr       string
	Key        string
	Username   string
	Conns      int
	Messages   int
	Size       int
	TLS        string // "starttls", "implicit" or "none"
	TLSConfig  *tls.Config
	From, To   string
	Timeout    time.Duration
	OnProgress func(done int) // optional
}

// benchResult is what a run measured.
type benchResult struct {
	Sent, Failed int
	FirstError   string
	Elapsed      time.Duration
	Latencies    []time.Duration // per message, MAIL to the 250 after DATA
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

func cmdBench(ctx context.Context, args []string, e env) error {
	fs, _ := newFlags("bench")
	o := benchOptions{}
	fs.StringVar(&o.Addr, "addr", "127.0.0.1:2525", "gateway submission address")
	fs.StringVar(&o.Key, "key", "", "API key with smtp/inject (or use --key-file)")
	keyFile := fs.String("key-file", "", "file holding the API key")
	fs.StringVar(&o.Username, "username", "SMTP_Injection", "AUTH username")
	fs.IntVar(&o.Conns, "conns", 20, "parallel SMTP sessions")
	fs.IntVar(&o.Messages, "messages", 5000, "messages to send in all")
	fs.IntVar(&o.Size, "size", 10240, "message size in bytes")
	fs.StringVar(&o.TLS, "tls", "starttls", "starttls, implicit or none")
	insecure := fs.Bool("insecure-skip-verify", false, "do not verify the gateway's certificate (self-signed)")
	fs.StringVar(&o.From, "from", "bench@example.com", "envelope sender and From:")
	fs.StringVar(&o.To, "to", "sink@example.net", "envelope recipient")
	pos, err := parse(fs, benchUsage, args, e)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("bench: unexpected argument %q\n%s", pos[0], benchUsage)
	}
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("bench: read --key-file: %w", err)
		}
		o.Key = strings.TrimSpace(string(b))
	}
	switch {
	case o.Key == "":
		return usagef("bench: --key is required (create one with: smtpgw keys create --label bench --grant smtp/inject)")
	case o.Conns < 1 || o.Messages < 1 || o.Size < 200:
		return usagef("bench: --conns and --messages must be at least 1 and --size at least 200")
	case o.TLS != "starttls" && o.TLS != "implicit" && o.TLS != "none":
		return usagef("bench: --tls must be starttls, implicit or none, not %q", o.TLS)
	}
	host, _, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return usagef("bench: --addr %q is not HOST:PORT", o.Addr)
	}
	o.TLSConfig = &tls.Config{ServerName: host, InsecureSkipVerify: *insecure, MinVersion: tls.VersionTLS12}
	res := runBench(ctx, o)
	fmt.Fprintf(e.stdout, "smtpgw bench: N=%d size=%d sessions=%d sent=%d failed=%d elapsed=%s msgs_per_s=%.0f p50=%s p99=%s\n",
		o.Messages, o.Size, o.Conns, res.Sent, res.Failed, res.Elapsed.Round(time.Millisecond), res.rate(),
		res.percentile(0.50).Round(10*time.Microsecond), res.percentile(0.99).Round(10*time.Microsecond))
	if res.Failed > 0 {
		return fmt.Errorf("bench: %d of %d messages failed, first: %s", res.Failed, o.Messages, res.FirstError)
	}
	return nil
}

// runBench sends o.Messages messages over o.Conns sessions. A session that
// fails is redialled, so one error costs one message.
func runBench(ctx context.Context, o benchOptions) benchResult {
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	body := benchMessage(o.From, o.To, o.Size)
	var next atomic.Int64
	var mu sync.Mutex
	res := benchResult{Latencies: make([]time.Duration, 0, o.Messages)}
	start := time.Now()
	var wg sync.WaitGroup
	for range o.Conns {
		wg.Go(func() {
			var c *smtp.Client
			defer func() {
				if c != nil {
					_ = c.Quit()
				}
			}()
			for ctx.Err() == nil && int(next.Add(1)) <= o.Messages {
				var err error
				if c == nil {
					c, err = benchDial(o)
				}
				var lat time.Duration
				if err == nil {
					t0 := time.Now()
					err = c.SendMail(o.From, []string{o.To}, bytes.NewReader(body))
					lat = time.Since(t0)
				}
				mu.Lock()
				if err != nil {
					res.Failed++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
					if c != nil {
						_ = c.Close()
						c = nil
					}
				} else {
					res.Sent++
					res.Latencies = append(res.Latencies, lat)
				}
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
	return res
}

// benchDial opens one authenticated session.
func benchDial(o benchOptions) (*smtp.Client, error) {
	var c *smtp.Client
	var err error
	switch o.TLS {
	case "implicit":
		c, err = smtp.DialTLS(o.Addr, o.TLSConfig)
	case "starttls":
		c, err = smtp.DialStartTLS(o.Addr, o.TLSConfig)
	default:
		c, err = smtp.Dial(o.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", o.Addr, err)
	}
	c.CommandTimeout = o.Timeout
	c.SubmissionTimeout = o.Timeout
	if err := c.Auth(sasl.NewPlainClient("", o.Username, o.Key)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("auth: %w", err)
	}
	return c, nil
}

// benchMessage builds a message of about size bytes with random text lines.
func benchMessage(from, to string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: smtpgw bench\r\nMessage-ID: <%d.bench@smtpgw>\r\nDate: %s\r\n\r\n",
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
