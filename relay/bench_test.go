package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// BenchmarkRelay measures relay throughput: b.N queued 10 KiB messages,
// one recipient each, delivered to a local go-smtp sink, as BDAT (the sink
// offers CHUNKING) and as DATA (it does not). Run with
// go test -bench Relay -run '^$' ./relay/.
func BenchmarkRelay(b *testing.B) {
	for _, kind := range storetest.Backends {
		for _, transfer := range []string{"bdat", "data"} {
			b.Run(kind+"/"+transfer, func(b *testing.B) {
				benchRelay(b, kind, transfer == "data")
			})
		}
	}
}

func benchRelay(b *testing.B, kind string, noChunking bool) {
	st := storetest.Open(b, kind)
	tg := newTarget(b, targetOpts{noChunking: noChunking})
	body := testBody("s@src.test", "bench") + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 10240/80)
	enqueueMany(b, st, b.N, body)
	cfg := smarthostConfig(b, tg)
	cfg.Workers = 32
	cfg.Logger = slog.New(slog.DiscardHandler)
	r, err := New(cfg, st, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := r.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	tg.waitFor(b, fmt.Sprintf("%d messages", b.N), func(g []received) bool { return len(g) >= b.N })
	b.StopTimer()
	r.Stop()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// enqueueMany queues n messages concurrently (so group commit batches them).
func enqueueMany(b *testing.B, st store.Store, n int, body string) {
	b.Helper()
	const par = 32
	var wg sync.WaitGroup
	errs := make(chan error, par)
	for w := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += par {
				m := &store.Message{ID: store.NewID(), MailFrom: "s@src.test", Body: []byte(body),
					Recipients: []*store.Recipient{{Address: fmt.Sprintf("r%d@d%d.test", i, i%10), Domain: fmt.Sprintf("d%d.test", i%10)}}}
				if err := st.Enqueue(context.Background(), m); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("enqueue: %v", err)
	}
}
