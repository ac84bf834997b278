package store

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
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
