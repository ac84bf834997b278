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

func TestMetrics(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	tg := newTarget(t, targetOpts{})
	reg := prometheus.NewRegistry()
	r, err := New(smarthostConfig(t, tg), st, reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(smarthostConfig(t, tg), st, reg); err == nil {
		t.Error("a second Relay on the same registry registered its metrics again")
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	m := enqueue(t, st, "s@src.test", []string{"a@dest.test", "b@dest.test"}, testBody("s@src.test", "metrics"))
	waitFinal(t, st, m.ID)
	if v := testutil.ToFloat64(r.metrics.deliveries.WithLabelValues(store.StateDelivered)); v != 2 {
		t.Errorf("deliveries_total{outcome=delivered} = %v, want 2", v)
	}
	if v := testutil.ToFloat64(r.metrics.claimed); v != 2 {
		t.Errorf("claimed_total = %v, want 2", v)
	}
	if n := testutil.CollectAndCount(r.metrics.attempt); n != 1 {
		t.Errorf("attempt histogram has %d series, want 1", n)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
	}
	for _, want := range []string{"smtpgw_relay_deliveries_total", "smtpgw_relay_attempt_duration_seconds",
		"smtpgw_relay_claimed_total", "smtpgw_relay_inflight_transactions", "smtpgw_relay_dsn_total"} {
		if !names[want] {
			t.Errorf("metric %s not registered", want)
		}
	}
}

func TestEventPruning(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	ctx := context.Background()
	now := time.Now()
	if err := st.AddEvents(ctx, []store.Event{
		{Type: store.EventDelivery, Time: now.Add(-48 * time.Hour), MessageID: "old", Recipient: "a@x.test"},
		{Type: store.EventDelivery, Time: now.Add(-time.Minute), MessageID: "new", Recipient: "a@x.test"},
	}); err != nil {
		t.Fatal(err)
	}
	cfg := smarthostConfig(t, newTarget(t, targetOpts{}))
	cfg.EventRetention = 24 * time.Hour
	startRelay(t, cfg, st)
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs, err := st.ListEvents(ctx, store.EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 1 {
			if evs[0].MessageID != "new" {
				t.Fatalf("kept %q, want the recent event", evs[0].MessageID)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events left, want the old one pruned at start", len(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQueueMetrics reads the queue gauges through the collector, on both
// stores: waiting recipients and the oldest waiting message's age, then the
// same after delivery.
func TestQueueMetrics(t *testing.T) {
	t.Parallel()
	storetest.ForEach(t, func(t *testing.T, st store.Store) {
		c := newQueueCollector(st, testLogger(t))
		enqueue(t, st, "s@src.test", []string{"a@dest.test", "b@dest.test"}, testBody("s@src.test", "gauges"))
		if v := queueGauge(t, c, store.StateQueued); v != 2 {
			t.Errorf("smtpgw_queue_recipients{state=queued} = %v, want 2", v)
		}
		if n := testutil.CollectAndCount(c, "smtpgw_queue_oldest_waiting_seconds"); n != 1 {
			t.Fatalf("oldest_waiting_seconds series = %d", n)
		}

		tg := newTarget(t, targetOpts{})
		r, err := New(smarthostConfig(t, tg), st, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		deadline := time.Now().Add(10 * time.Second)
		for queueGauge(t, c, store.StateDelivered) != 2 {
			if time.Now().After(deadline) {
				t.Fatal("smtpgw_queue_recipients{state=delivered} never reached 2")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if v := queueGauge(t, c, store.StateQueued); v != 0 {
			t.Errorf("queued after delivery = %v, want 0", v)
		}
	})
}

// queueGauge collects c and returns smtpgw_queue_recipients of one state.
func queueGauge(t *testing.T, c *queueCollector, state string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "smtpgw_queue_recipients" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == state {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no smtpgw_queue_recipients{state=%q}", state)
	return 0
}
