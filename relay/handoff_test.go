package relay

import (
	"context"
	"testing"
	"time"

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
			l, ok := r.Reserve(len(m.Recipients), []string{"dest.test"})
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
	if _, ok := startRelay(t, held, st).Reserve(1, nil); ok {
		t.Error("Reserve granted room on hold")
	}

	cfg := smarthostConfig(t, tg) // 4 workers: room for 8
	r, err := New(cfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Reserve(1, nil); ok {
		t.Error("Reserve granted room before Start")
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Reserve(6, nil); !ok {
		t.Fatal("Reserve refused 6 of 8")
	}
	if _, ok := r.Reserve(3, nil); ok {
		t.Error("Reserve granted 3 more with 2 left")
	}
	r.Release(6)
	if _, ok := r.Reserve(8, nil); !ok {
		t.Error("Reserve refused 8 after Release")
	}
	r.Release(8)
	r.Stop()
	if _, ok := r.Reserve(1, nil); ok {
		t.Error("Reserve granted room after Stop")
	}
}
