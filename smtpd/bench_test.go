package smtpd

import (
	"fmt"
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
