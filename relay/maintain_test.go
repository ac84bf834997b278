package relay

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// The lease of these tests is long (1h): work a stopped relay claimed can
// only reach another relay through the release, never through the lease
// running out.
const longLease = time.Hour

// TestStopReleasesClaimedWork stops a relay that holds claimed jobs it has
// not started — waiting for a worker (one worker) or for the destination's
// semaphore (two workers, one slot per destination) — while a delivery is
// in progress. The delivery finishes; the waiting job is dropped and its
// lease released, so a second relay delivers it without waiting an hour.
func TestStopReleasesClaimedWork(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		for _, c := range []struct {
			name    string
			workers int
		}{{"waiting for a worker", 1}, {"waiting for the destination", 2}} {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				st := storetest.Open(t, kind)
				entered, unblock := make(chan struct{}), make(chan struct{})
				var once sync.Once
				open := func() { once.Do(func() { close(unblock) }) }
				t.Cleanup(open)
				tg := newTarget(t, targetOpts{data: func(n int) error {
					if n == 0 {
						close(entered)
						<-unblock
					}
					return nil
				}})

				// Another node's work: the stopping relay must not release it.
				other := enqueue(t, st, "s@src.test", []string{"other@dest.test"}, testBody("s@src.test", "other"))
				if cl, err := st.ClaimDue(context.Background(), "other-node", store.ClaimOptions{Limit: 10, Lease: longLease}); err != nil || len(cl) != 1 {
					t.Fatalf("claim as other-node: %d, %v", len(cl), err)
				}
				m1 := enqueue(t, st, "s@src.test", []string{"one@dest.test"}, testBody("s@src.test", "one"))
				m2 := enqueue(t, st, "s@src.test", []string{"two@dest.test"}, testBody("s@src.test", "two"))

				cfg := smarthostConfig(t, tg)
				cfg.Owner, cfg.Lease = "node-a", longLease
				cfg.Workers, cfg.SmarthostConcurrency = c.workers, 1
				a := startRelay(t, cfg, st)
				select {
				case <-entered:
				case <-time.After(30 * time.Second):
					t.Fatal("relay A never reached DATA")
				}
				stopped := make(chan struct{})
				go func() {
					a.Stop()
					close(stopped)
				}()
				// Wait until A has stopped claiming and the waiting job is
				// gone (only the blocked delivery holds a worker slot), so
				// unblocking cannot let A deliver the second message.
				<-a.loopDone
				for deadline := time.Now().Add(30 * time.Second); len(a.slots) != 1; {
					if time.Now().After(deadline) {
						t.Fatalf("%d jobs still hold worker slots after Stop", len(a.slots))
					}
					time.Sleep(5 * time.Millisecond)
				}
				select {
				case <-stopped:
					t.Fatal("Stop returned while a delivery was running")
				default:
				}
				open()
				<-stopped
				if n := len(tg.messages()); n != 1 {
					t.Fatalf("relay A delivered %d messages, want 1 (the other was waiting)", n)
				}

				cfg.Owner = "node-b"
				startRelay(t, cfg, st)
				for _, m := range []*store.Message{m1, m2} {
					fm := waitFinal(t, st, m.ID)
					if s, reply := rcptState(t, fm, m.Recipients[0].Address); s != store.StateDelivered {
						t.Errorf("%s: %s (%s), want delivered", m.Recipients[0].Address, s, reply)
					}
					if fm.Recipients[0].Attempts != 1 {
						t.Errorf("%s: %d attempts, want 1", m.Recipients[0].Address, fm.Recipients[0].Attempts)
					}
				}
				subjects := countBy(tg.messages(), func(r received) string { return headerValue(r.data, "Subject") })
				if subjects["one"] != 1 || subjects["two"] != 1 || len(subjects) != 2 {
					t.Errorf("target got %v, want one and two once each", subjects)
				}
				// other-node's lease was left alone.
				om, err := st.GetMessage(context.Background(), other.ID)
				if err != nil || om.Recipients[0].State != store.StateQueued {
					t.Errorf("other node's recipient: %+v, %v; want still queued under its lease", om, err)
				}
			})
		}
	}
}

// TestReleaseAllLeasesOnStart: work leased by a dead process (a long lease)
// is delivered at once by a relay started with ReleaseAllLeasesOnStart.
func TestReleaseAllLeasesOnStart(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			tg := newTarget(t, targetOpts{})
			m := enqueue(t, st, "s@src.test", []string{"bob@dest.test", "carol@dest.test"}, testBody("s@src.test", "dead"))
			if cl, err := st.ClaimDue(context.Background(), "dead-process", store.ClaimOptions{Limit: 10, Lease: longLease}); err != nil || len(cl) != 2 {
				t.Fatalf("claim as the dead process: %d, %v", len(cl), err)
			}
			cfg := smarthostConfig(t, tg)
			cfg.Lease, cfg.ReleaseAllLeasesOnStart = longLease, true
			startRelay(t, cfg, st)
			fm := waitFinal(t, st, m.ID)
			for _, r := range fm.Recipients {
				if r.State != store.StateDelivered {
					t.Errorf("%s: %s (%s), want delivered", r.Address, r.State, r.LastReply)
				}
			}
			if n := len(tg.messages()); n != 1 {
				t.Errorf("target got %d messages, want 1", n)
			}
		})
	}
}

// TestStartFailsWhenLeasesCannotBeReleased: a closed store makes Start
// fail with the reason, and Stop still returns.
func TestStartFailsWhenLeasesCannotBeReleased(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	cfg := smarthostConfig(t, newTarget(t, targetOpts{}))
	cfg.ReleaseAllLeasesOnStart = true
	r, err := New(cfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	err = r.Start(context.Background())
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "release leases") {
		t.Errorf("Start on a closed store: %v, want a release-leases error wrapping ErrUnavailable", err)
	}
	r.Stop()
}

// TestPruneFinishedMessages: at start the relay deletes finished messages
// older than FinishedRetention in chunks until none is left, keeps
// unfinished ones, and keeps every event.
func TestPruneFinishedMessages(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, kind)
			ctx := context.Background()
			var finished []*store.Message
			for range 5 {
				finished = append(finished, enqueue(t, st, "s@src.test", []string{"bob@dest.test"}, testBody("s@src.test", "done")))
			}
			cl, err := st.ClaimDue(ctx, "earlier", store.ClaimOptions{Limit: 100, Lease: time.Minute})
			if err != nil || len(cl) != 5 {
				t.Fatalf("claim: %d, %v", len(cl), err)
			}
			var f store.Finish
			for _, c := range cl {
				f.Outcomes = append(f.Outcomes, store.Outcome{RecipientID: c.ID, State: store.StateDelivered, Reply: "250 ok"})
			}
			if n, err := st.Finish(ctx, "earlier", f); err != nil || n != 5 {
				t.Fatalf("finish: %d, %v", n, err)
			}
			// Deferred for an hour: not finished, and not due for the relay.
			waiting := enqueue(t, st, "s@src.test", []string{"carol@dest.test"}, testBody("s@src.test", "waiting"),
				func(m *store.Message) {
					m.Recipients[0].State = store.StateDeferred
					m.Recipients[0].NextAttempt = time.Now().Add(time.Hour)
				})
			time.Sleep(5 * time.Millisecond) // finished more than FinishedRetention ago

			cfg := smarthostConfig(t, newTarget(t, targetOpts{}))
			cfg.FinishedRetention = time.Millisecond
			r, err := New(cfg, st, nil)
			if err != nil {
				t.Fatal(err)
			}
			r.pruneLimit = 2 // 5 messages: chunks of 2, 2 and 1
			if err := r.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Stop)

			deadline := time.Now().Add(30 * time.Second)
			for {
				msgs, err := st.ListMessages(ctx, store.QueueFilter{})
				if err != nil {
					t.Fatal(err)
				}
				if len(msgs) == 1 {
					if msgs[0].ID != waiting.ID {
						t.Fatalf("kept %s, want only the unfinished message", msgs[0].ID)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d messages left, want the 5 finished ones pruned at start", len(msgs))
				}
				time.Sleep(10 * time.Millisecond)
			}
			for _, m := range finished {
				evs, err := st.ListEvents(ctx, store.EventFilter{MessageID: m.ID})
				if err != nil || len(evs) != 1 || evs[0].Type != store.EventInjection {
					t.Errorf("events of pruned %s: %+v, %v; want its injection event kept", m.ID, evs, err)
				}
			}
		})
	}
}

func TestFinishedRetentionDefault(t *testing.T) {
	t.Parallel()
	r, err := New(Config{Hostname: "h"}, storetest.Open(t, "sqlite"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.conf().FinishedRetention != DefaultFinishedRetention || r.pruneLimit != pruneBatch {
		t.Errorf("FinishedRetention %v, prune limit %d; want %v, %d", r.conf().FinishedRetention, r.pruneLimit,
			DefaultFinishedRetention, pruneBatch)
	}
}

// TestPruneAuditWithEvents: events.retention applies to the audit log.
func TestPruneAuditWithEvents(t *testing.T) {
	t.Parallel()
	for _, kind := range storetest.Backends {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st := storetest.Open(t, kind)
			for _, at := range []time.Time{time.Now().Add(-72 * time.Hour), time.Now()} {
				if err := st.AddAudit(ctx, &store.AuditEntry{Time: at, Action: "create", ObjectType: "api_key", ObjectID: "k"}); err != nil {
					t.Fatal(err)
				}
			}
			cfg := smarthostConfig(t, newTarget(t, targetOpts{}))
			cfg.EventRetention = 48 * time.Hour
			r, err := New(cfg, st, nil)
			if err != nil {
				t.Fatal(err)
			}
			r.pruneEvents(ctx)
			es, err := st.ListAudit(ctx, store.AuditFilter{})
			if err != nil || len(es) != 1 || time.Since(es[0].Time) > time.Hour {
				t.Errorf("after pruning: %+v, %v; want only the recent entry", es, err)
			}
		})
	}
}
