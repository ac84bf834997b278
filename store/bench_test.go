package store

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// benchBackends runs fn as sub-benchmarks "sqlite" and "postgres".
func benchBackends(b *testing.B, fn func(b *testing.B, s Store)) {
	for _, name := range []string{"sqlite", "postgres"} {
		b.Run(name, func(b *testing.B) {
			fn(b, openEnv(b, name).s)
		})
	}
}

// BenchmarkEnqueue measures group-committed Enqueue of 10 KiB, one-recipient
// messages from about 20 concurrent callers, as from 20 SMTP sessions.
func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 160) // 10 KiB
	benchBackends(b, func(b *testing.B, s Store) {
		ctx := context.Background()
		b.SetBytes(int64(len(body)))
		// RunParallel starts parallelism*GOMAXPROCS goroutines.
		b.SetParallelism(max(1, 20/runtime.GOMAXPROCS(0)))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m := &Message{
					ID:       NewID(),
					KeyID:    "bench",
					MailFrom: "bench@example.com",
					Body:     body,
					Recipients: []*Recipient{{
						Address: "rcpt@example.org",
						Domain:  "example.org",
					}},
				}
				if err := s.Enqueue(ctx, m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkKeyByHash measures the AUTH lookup.
func BenchmarkKeyByHash(b *testing.B) {
	benchBackends(b, func(b *testing.B, s Store) {
		ctx := context.Background()
		hashes := make([][]byte, 100)
		for i := range hashes {
			hashes[i] = hashOf(fmt.Sprintf("bench-key-%d", i))
			if err := s.CreateKey(ctx, &Key{Label: "bench", Grants: []string{"smtp/inject"}, Hash: hashes[i]}); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := s.KeyByHash(ctx, hashes[i%len(hashes)]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkFinish measures Finish as relay workers call it: 32 concurrent
// callers, each writing one delivered outcome and its event per call.
func BenchmarkFinish(b *testing.B) {
	benchBackends(b, func(b *testing.B, s Store) {
		ctx := context.Background()
		// b.N one-recipient messages, claimed by one owner.
		errs := make(chan error, 32)
		for w := range 32 {
			go func() {
				for i := w; i < b.N; i += 32 {
					m := &Message{ID: NewID(), MailFrom: "bench@example.com", Body: []byte("Subject: x\r\n\r\nx\r\n"),
						Recipients: []*Recipient{{Address: fmt.Sprintf("r%d@example.org", i), Domain: "example.org"}}}
					if err := s.Enqueue(ctx, m); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range 32 {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		var claimed []*Claimed
		for len(claimed) < b.N {
			cs, err := s.ClaimDue(ctx, "bench", ClaimOptions{Limit: 1000, Lease: time.Hour})
			if err != nil || len(cs) == 0 {
				b.Fatalf("claim: %d, %v", len(cs), err)
			}
			claimed = append(claimed, cs...)
		}
		next := make(chan *Claimed, len(claimed))
		for _, c := range claimed {
			next <- c
		}
		close(next)
		b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c := <-next
				n, err := s.Finish(ctx, "bench", Finish{
					Outcomes: []Outcome{{RecipientID: c.ID, State: StateDelivered, Reply: "250 2.0.0 ok"}},
					Events: []Event{{Type: EventDelivery, MessageID: c.MessageID, Recipient: c.Address,
						Reply: "250 2.0.0 ok"}},
				})
				if err != nil || n != 1 {
					b.Errorf("finish: %d, %v", n, err)
					return
				}
			}
		})
	})
}
