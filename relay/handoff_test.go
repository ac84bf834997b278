package relay

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestHandoff: a message stored under the lease Reserve granted and handed
// off is delivered without a claim (the lease keeps it from every claim,
// this relay's too), its outcome is recorded, and the room comes back.
func TestHandoff(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			tg := newTarget(t, targetOpts{})
			st := storetest.Open(t, kind)
			r := startRelay(t, smarthostConfig(t, tg), st)

			m := &store.Message{ID: store.NewID(), KeyID: "k1", MailFrom: "s@src.test",
				Body:       []byte(testBody("s@src.test", "handoff")),
				Recipients: []*store.Recipient{{Address: "a@dest.test", Domain: "dest.test"}, {Address: "b@dest.test", Domain: "dest.test"}}}
			l, ok := r.Reserve(context.Background(), len(m.Recipients), []string{"dest.test"})
			if !ok {
				t.Fatal("Reserve refused a running relay with room")
			}
			if l.Owner != r.Owner() || time.Until(l.Until) <= 0 {
				t.Fatalf("lease %+v: want owner %q and an end in the future", l, r.Owner())
			}
			if got := r.reserved.Load(); got != 2 {
				t.Errorf("reserved %d, want 2", got)
			}
			m.Lease = &l
			if err := st.Enqueue(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			// Leased: no claim can take it, whoever asks.
			if cs, err := st.ClaimDue(context.Background(), "someone-else", store.ClaimOptions{Limit: 10, Lease: time.Minute}); err != nil || len(cs) != 0 {
				t.Fatalf("claimed %d (%v) of a handed-off message", len(cs), err)
			}
			r.Handoff(l, m.Claimed(false))
			fm := waitFinal(t, st, m.ID)
			for _, rc := range fm.Recipients {
				if rc.State != store.StateDelivered {
					t.Errorf("%s: %s (%s), want delivered", rc.Address, rc.State, rc.LastReply)
				}
			}
			got := tg.waitFor(t, "the handed-off message", func(rs []received) bool { return len(rs) == 1 })
			if len(got[0].to) != 2 {
				t.Errorf("delivered to %v, want both recipients in one transaction", got[0].to)
			}
			if n := r.reserved.Load(); n != 0 {
				t.Errorf("reserved %d after the handoff, want 0", n)
			}
			if c, h := testutil.ToFloat64(r.metrics.claimed), testutil.ToFloat64(r.metrics.handedOff); c != 0 || h != 2 {
				t.Errorf("claimed %v, handed off %v; want 0 and 2", c, h)
			}
		})
	}
}

// TestReserveRefuses: no room is granted on hold, beyond 2×Workers, or
// after Stop; Release gives room back.
func TestReserveRefuses(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, targetOpts{})
	st := storetest.Open(t, "sqlite")

	held := smarthostConfig(t, tg)
	held.Mode = ModeHold
	if _, ok := startRelay(t, held, st).Reserve(context.Background(), 1, nil); ok {
		t.Error("Reserve granted room on hold")
	}

	cfg := smarthostConfig(t, tg) // 4 workers: room for 8
	r, err := New(cfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Reserve(context.Background(), 1, nil); ok {
		t.Error("Reserve granted room before Start")
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Reserve(context.Background(), 6, nil); !ok {
		t.Fatal("Reserve refused 6 of 8")
	}
	if _, ok := r.Reserve(context.Background(), 3, nil); ok {
		t.Error("Reserve granted 3 more with 2 left")
	}
	r.Release(6)
	if _, ok := r.Reserve(context.Background(), 8, nil); !ok {
		t.Error("Reserve refused 8 after Release")
	}
	r.Release(8)
	r.Stop()
	if _, ok := r.Reserve(context.Background(), 1, nil); ok {
		t.Error("Reserve granted room after Stop")
	}
}

// TestReserveWaitsForRoom (relay.in_flow_delay): with the relay full,
// Reserve waits for room, takes it the moment a reservation is released,
// and gives up after InFlowDelay, or with its context; it does not wait
// on hold, without a delay, or for more recipients than can ever fit.
func TestReserveWaitsForRoom(t *testing.T) {
	t.Parallel()
	tg := newTarget(t, targetOpts{})
	st := storetest.Open(t, "sqlite")
	cfg := smarthostConfig(t, tg) // 4 workers: room for 8
	cfg.InFlowDelay = 300 * time.Millisecond
	r := startRelay(t, cfg, st)
	ctx := context.Background()
	if _, ok := r.Reserve(ctx, 8, nil); !ok {
		t.Fatal("Reserve refused 8 of 8")
	}

	// Released while a call waits: that call gets the room.
	got := make(chan bool, 1)
	go func() {
		_, ok := r.Reserve(ctx, 2, nil)
		got <- ok
	}()
	for r.room.waiters.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	r.Release(3)
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("Reserve refused 2 after 3 were released while it waited")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Reserve did not wake when room was released")
	}

	// Still full (7 of 8 reserved): a call for 2 waits the whole delay,
	// then refuses, and the wait is counted.
	start := time.Now()
	if _, ok := r.Reserve(ctx, 2, nil); ok {
		t.Fatal("Reserve granted 2 with 1 left")
	}
	if d := time.Since(start); d < cfg.InFlowDelay {
		t.Errorf("Reserve refused after %s, want a wait of %s", d, cfg.InFlowDelay)
	}
	// Both waits are observed, the second one at least the delay long.
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.metrics.inflowDelay)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if h := mfs[0].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() < cfg.InFlowDelay.Seconds() {
		t.Errorf("smtpgw_relay_inflow_delay_seconds: %d waits, %g s in all; want 2, over %s", h.GetSampleCount(), h.GetSampleSum(), cfg.InFlowDelay)
	}

	// Its context ends the wait.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, ok := r.Reserve(cctx, 2, nil); ok || time.Since(start) >= cfg.InFlowDelay {
		t.Errorf("Reserve with a context of 20 ms: granted %v after %s, want a refusal before %s", ok, time.Since(start), cfg.InFlowDelay)
	}

	// More than 2×Workers can never fit: refused at once.
	start = time.Now()
	if _, ok := r.Reserve(ctx, 9, nil); ok || time.Since(start) >= cfg.InFlowDelay {
		t.Errorf("Reserve of 9 (room for 8): granted %v after %s, want an immediate refusal", ok, time.Since(start))
	}
	r.Release(7)

	// Waiters are served in turn: with the relay full, A then B wait; the
	// first room freed goes to A, the next to B.
	if _, ok := r.Reserve(ctx, 8, nil); !ok {
		t.Fatal("Reserve refused 8 of 8")
	}
	cfg.InFlowDelay = 10 * time.Second
	if err := r.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 2)
	for i, name := range []string{"A", "B"} {
		go func() {
			if _, ok := r.Reserve(ctx, 1, nil); ok {
				order <- name
			} else {
				order <- name + " refused"
			}
		}()
		for r.room.waiters.Load() != int64(i+1) {
			time.Sleep(time.Millisecond)
		}
	}
	for _, want := range []string{"A", "B"} {
		r.Release(1)
		select {
		case got := <-order:
			if got != want {
				t.Errorf("room freed went to %s, want %s (the one waiting longest)", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no waiter took the room freed (want %s)", want)
		}
	}
	r.Release(8)

	// No delay configured: full means an immediate refusal.
	st2 := storetest.Open(t, "sqlite")
	r2 := startRelay(t, smarthostConfig(t, tg), st2)
	if _, ok := r2.Reserve(ctx, 8, nil); !ok {
		t.Fatal("Reserve refused 8 of 8")
	}
	start = time.Now()
	if _, ok := r2.Reserve(ctx, 1, nil); ok || time.Since(start) >= cfg.InFlowDelay {
		t.Errorf("Reserve without in_flow_delay: granted %v after %s, want an immediate refusal", ok, time.Since(start))
	}
}
