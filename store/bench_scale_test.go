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
// 12): AUTH lookups and Enqueue with 10 or N keys, claims with 0 waiting
// recipients, N deferred ones (not yet due) or a backlog of N queued ones
// (due now), and queue statistics with 0 or N deferred recipients. The big
// tables are built once per sub-benchmark with one INSERT ... SELECT (N =
// SMTPGW_BENCH_BIG rows, default 1,000,000; the sub-benchmarks' names carry
// N), so they only cost time when these benchmarks run:
//
//	go test -run '^$' -bench 'Scale' -benchtime 200x ./store/
//	SMTPGW_BENCH_BIG=20000 go test -run '^$' -bench 'Scale' -benchtime 20x ./store/ # a quick check

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

// fillWaiting adds n messages, each with one recipient: deferred for a day,
// or, with due, queued and due an hour ago (a backlog the relay has not
// caught up with).
func fillWaiting(b *testing.B, s Store, n int, due bool) {
	state, sqliteNext, pgNext := "'deferred'", "9000000000000000", "now() + interval '1 day'"
	if due {
		state, sqliteNext, pgNext = "'queued'", "x", "now() - interval '1 hour'"
	}
	fillSQL(b, s, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
		INSERT INTO messages (id, body, size, created_at) SELECT 'big' || x, X'00', 1, x FROM c`,
		`WITH m AS (INSERT INTO messages (id, size, created_at)
			SELECT 'big' || x, 1, now() - interval '1 hour' FROM generate_series(1, $1) x RETURNING id)
		INSERT INTO message_bodies (message_id, seq, chunk) SELECT id, 0, '\x00'::bytea FROM m`, n)
	fillSQL(b, s, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
		INSERT INTO recipients (message_id, address, domain, state, next_attempt, updated_at)
		SELECT 'big' || x, 'r' || x || '@d' || (x % 1000) || '.example', 'd' || (x % 1000) || '.example',
			`+state+`, `+sqliteNext+`, x FROM c`,
		`INSERT INTO recipients (message_id, address, domain, state, next_attempt, updated_at)
		SELECT 'big' || x, 'r' || x || '@d' || (x % 1000) || '.example', 'd' || (x % 1000) || '.example',
			`+state+`, `+pgNext+`, now() FROM generate_series(1, $1) x`, n)
}

// bigName is a sub-benchmark's name: what=N with the real N.
func bigName(b *testing.B, what string) string { return what + "=" + strconv.Itoa(benchBig(b)) }

// BenchmarkScaleClaim measures one claim (limit 10) with no other
// recipient waiting, beside N deferred ones not yet due (the claim of the
// one due recipient, enqueued untimed, must not read them), and out of a
// backlog of N queued recipients all due (the claim takes the 10 oldest).
// Finishing what was claimed is untimed.
func BenchmarkScaleClaim(b *testing.B) {
	for _, c := range []struct{ name, fill string }{
		{"queued=0", ""}, {bigName(b, "deferred"), "deferred"}, {bigName(b, "queued"), "queued"},
	} {
		b.Run(c.name, func(b *testing.B) {
			benchBackends(b, func(b *testing.B, s Store) {
				want := 1
				switch c.fill {
				case "deferred":
					fillWaiting(b, s, benchBig(b), false)
				case "queued":
					fillWaiting(b, s, benchBig(b), true)
					want = min(10, benchBig(b))
				}
				ctx := context.Background()
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					if c.fill != "queued" {
						if err := s.Enqueue(ctx, newMsg(1)); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
					cs, err := s.ClaimDue(ctx, "bench", ClaimOptions{Limit: 10, Lease: time.Minute})
					b.StopTimer()
					if err != nil || len(cs) != want {
						b.Fatalf("claim: %d, %v; want %d", len(cs), err, want)
					}
					f := Finish{}
					for _, r := range cs {
						f.Outcomes = append(f.Outcomes, Outcome{RecipientID: r.ID, State: StateDelivered})
					}
					if _, err := s.Finish(ctx, "bench", f); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		})
	}
}

// BenchmarkScaleStats measures Stats (what `queue stats` and every
// /metrics scrape read) with 0 or N deferred recipients.
func BenchmarkScaleStats(b *testing.B) {
	for _, big := range []bool{false, true} {
		b.Run(map[bool]string{false: "queued=0", true: bigName(b, "deferred")}[big], func(b *testing.B) {
			benchBackends(b, func(b *testing.B, s Store) {
				if big {
					fillWaiting(b, s, benchBig(b), false)
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
// N keys, and Enqueue's latency (one caller, so one commit per message)
// beside 10 or N keys.
func BenchmarkScaleKeyByHash(b *testing.B) {
	for _, big := range []bool{false, true} {
		b.Run(map[bool]string{false: "keys=10", true: bigName(b, "keys")}[big], func(b *testing.B) {
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
