package smtpd

import (
	"fmt"
	"net/netip"
	"net/smtp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkInject measures accepted messages per second: 10 KiB messages
// over 20 parallel sessions, each with real TLS and one AUTH, sending many
// messages. Every 250 waits for the group commit that holds the message.
func BenchmarkInject(b *testing.B) {
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) {
			e := setup(b, backend, nil)
			const sessions = 20
			line := strings.Repeat("x", 78) + "\r\n"
			msg := message("sender@example.com") + strings.Repeat(line, 10<<10/len(line))
			clients := make([]*smtp.Client, sessions)
			for i := range clients {
				c, err := smtp.Dial(e.srv.SubmissionAddr().String())
				if err != nil {
					b.Fatal(err)
				}
				if err := c.StartTLS(e.pair.Client()); err != nil {
					b.Fatal(err)
				}
				if err := c.Auth(smtp.PlainAuth("", "SMTP_Injection", e.key, "127.0.0.1")); err != nil {
					b.Fatal(err)
				}
				clients[i] = c
				defer func() { _ = c.Close() }()
			}
			var next atomic.Int64
			var failed atomic.Pointer[error]
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for i, c := range clients {
				wg.Go(func() {
					for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
						to := fmt.Sprintf("r%d-%d@example.net", i, n)
						if err := send(c, "sender@example.com", []string{to}, msg); err != nil {
							failed.CompareAndSwap(nil, &err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if err := failed.Load(); err != nil {
				b.Fatal(*err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkPrepareHeader is the header work of every message: parse, the
// X-MSYS-API, From: and Subject: read, Received: (and Message-ID:, Date:
// when missing) added, written back.
func BenchmarkPrepareHeader(b *testing.B) {
	hdr := []byte("From: <bench@example.com>\r\nTo: <friend@example.net>\r\nSubject: smtpgw bench\r\n" +
		"Message-ID: <1.bench@smtpgw>\r\nDate: Wed, 02 Dec 2026 17:00:00 +0000\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\n")
	tr := traceInfo{helo: "client.example", ip: netip.MustParseAddr("127.0.0.1"), hostname: "gw.example",
		protocol: "ESMTPSA", tls: "TLS1.3 TLS_AES_128_GCM_SHA256", id: "01a237c59ba6520533ef", now: time.Now(),
		recipient: "friend@example.net"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := prepareHeader(hdr, tr, DefaultMaxReceived); err != nil {
			b.Fatal(err)
		}
	}
}
