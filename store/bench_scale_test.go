package store

import (
	"context"
	"database/sql"
	"os"
	"strconv"
	"testing"
	"time"
)

// Benchmarks of how the hot paths grow with the size of the tables (issue
// 12): AUTH lookups with 10 or a million keys, claims and queue statistics
// with 0 or a million deferred recipients. The big tables are built once
// per sub-benchmark with one INSERT ... SELECT (SMTPGW_BENCH_BIG rows,
// default 1,000,000), so they only cost time when these benchmarks run:
//
//	go test -run '^$' -bench 'Scale' -benchtime 200x ./store/

// benchBig is the number of rows of the big tables.
func benchBig(b *testing.B) int {
	if v := os.Getenv("SMTPGW_BENCH_BIG"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("SMTPGW_BENCH_BIG=%q: want a positive number of rows", v)
		}
		return n
	}
	return 1_000_000
}

// fillSQL runs the backend's statement among sqliteQ and pgQ with n.
func fillSQL(b *testing.B, s Store, sqliteQ, pgQ string, n int) {
	b.Helper()
	ctx := context.Background()
	var err error
	switch st := s.(type) {
	case *sqliteStore:
		err = st.inTx(ctx, "fill", func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, sqliteQ, n)
			return err
		})
		if err == nil {
			// As the running gateway's checkpoints would have by now.
			_, err = st.w.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
		}
	case *pgStore:
		_, err = st.pool.Exec(ctx, pgQ, n)
		if err == nil {
			_, err = st.pool.Exec(ctx, `ANALYZE`)
		}
	}
	if err != nil {
		b.Fatalf("fill %d rows: %v", n, err)
	}
}

// fillDeferred adds n messages, each with one recipient deferred for a day.
func fillDeferred(b *testing.B, s Store, n int) {
	fillSQL(b, s, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
		INSERT INTO messages (id, body, size, created_at) SELECT 'big' || x, X'00', 1, x FROM c`,
		`INSERT INTO messages (id, body, size, created_at)
		SELECT 'big' || x, '\x00'::bytea, 1, now() - interval '1 hour' FROM generate_series(1, $1) x`, n)
	fillSQL(b, s, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
		INSERT INTO recipients (message_id, address, domain, state, next_attempt, updated_at)
		SELECT 'big' || x, 'r' || x || '@d' || (x % 1000) || '.example', 'd' || (x % 1000) || '.example',
			'deferred', 9000000000000000, x FROM c`,
		`INSERT INTO recipients (message_id, address, domain, state, next_attempt, updated_at)
		SELECT 'big' || x, 'r' || x || '@d' || (x % 1000) || '.example', 'd' || (x % 1000) || '.example',
			'deferred', now() + interval '1 day', now() FROM generate_series(1, $1) x`, n)
}

// BenchmarkScaleClaim measures one claim of one due recipient beside 0 or
// a million deferred ones (enqueue and finish of that recipient untimed).
func BenchmarkScaleClaim(b *testing.B) {
	for _, big := range []bool{false, true} {
		b.Run(map[bool]string{false: "queued=0", true: "queued=1M"}[big], func(b *testing.B) {
			benchBackends(b, func(b *testing.B, s Store) {
				if big {
					fillDeferred(b, s, benchBig(b))
				}
				ctx := context.Background()
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					m := newMsg(1)
					if err := s.Enqueue(ctx, m); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					cs, err := s.ClaimDue(ctx, "bench", ClaimOptions{Limit: 10, Lease: time.Minute})
					b.StopTimer()
					if err != nil || len(cs) != 1 {
						b.Fatalf("claim: %d, %v", len(cs), err)
					}
					if _, err := s.Finish(ctx, "bench", Finish{Outcomes: []Outcome{{RecipientID: cs[0].ID, State: StateDelivered}}}); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		})
	}
}

// BenchmarkScaleStats measures Stats (what `queue stats` and every
// /metrics scrape read) with 0 or a million deferred recipients.
func BenchmarkScaleStats(b *testing.B) {
	for _, big := range []bool{false, true} {
		b.Run(map[bool]string{false: "queued=0", true: "queued=1M"}[big], func(b *testing.B) {
			benchBackends(b, func(b *testing.B, s Store) {
				if big {
					fillDeferred(b, s, benchBig(b))
				}
				mustEnqueueB(b, s)
				ctx := context.Background()
				b.ResetTimer()
				for range b.N {
					st, err := s.Stats(ctx)
					if err != nil || st.OldestQueued.IsZero() {
						b.Fatalf("stats: %+v, %v", st, err)
					}
				}
			})
		})
	}
}

// BenchmarkScaleKeyByHash measures the AUTH lookup (cache miss) with 10 or
// a million keys, and Enqueue's latency beside a million keys.
func BenchmarkScaleKeyByHash(b *testing.B) {
	for _, big := range []bool{false, true} {
		b.Run(map[bool]string{false: "keys=10", true: "keys=1M"}[big], func(b *testing.B) {
			benchBackends(b, func(b *testing.B, s Store) {
				n := 10
				if big {
					n = benchBig(b)
				}
				fillSQL(b, s, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
					INSERT INTO api_keys (id, hash, created_at, updated_at) SELECT 'k' || x, randomblob(32), 0, 0 FROM c`,
					`INSERT INTO api_keys (id, hash, created_at, updated_at)
					SELECT 'k' || x, sha256(x::text::bytea), now(), now() FROM generate_series(1, $1) x`, n)
				ctx := context.Background()
				h := hashOf("the key")
				if err := s.CreateKey(ctx, &Key{Label: "bench", Grants: []string{"smtp/inject"}, Hash: h}); err != nil {
					b.Fatal(err)
				}
				b.Run("auth", func(b *testing.B) {
					for range b.N {
						if _, err := s.KeyByHash(ctx, h); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run("enqueue", func(b *testing.B) {
					for range b.N {
						mustEnqueueB(b, s)
					}
				})
			})
		})
	}
}

// mustEnqueueB enqueues one small message.
func mustEnqueueB(b *testing.B, s Store) {
	b.Helper()
	if err := s.Enqueue(context.Background(), newMsg(1)); err != nil {
		b.Fatal(err)
	}
}
