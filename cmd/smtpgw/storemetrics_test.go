package main

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/smtpgw/smtpgw/internal/storetest"
	"github.com/smtpgw/smtpgw/store"
)

// TestStoreCollector checks /metrics reports the group committer's
// counters, and that they follow what the store did.
func TestStoreCollector(t *testing.T) {
	t.Parallel()
	st := storetest.Open(t, "sqlite")
	reg := prometheus.NewRegistry()
	c := newStoreCollector(st)
	reg.MustRegister(c)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	before := float64(st.CommitStats().Items)
	m := &store.Message{ID: store.NewID(), MailFrom: "a@example.net", Body: []byte("Subject: x\r\n\r\nx\r\n"),
		Recipients: []*store.Recipient{{Address: "b@example.org", Domain: "example.org"}}}
	if err := st.Enqueue(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if h := mf.GetMetric()[0].GetHistogram(); h != nil {
			// Every batch is in a bucket (+Inf is the count), and the
			// count is the batches so far.
			got[mf.GetName()+"_count"] = float64(h.GetSampleCount())
			got[mf.GetName()+"_sum"] = h.GetSampleSum()
			if bs := h.GetBucket(); len(bs) != len(store.CommitBuckets) || bs[len(bs)-1].GetCumulativeCount() > h.GetSampleCount() {
				t.Errorf("commit histogram buckets %v, count %d", bs, h.GetSampleCount())
			}
			continue
		}
		got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
	}
	if got["smtpgw_store_transaction_items_total"] != before+1 {
		t.Errorf("items %v, want %v", got["smtpgw_store_transaction_items_total"], before+1)
	}
	if got["smtpgw_store_transactions_total"] < 1 || got["smtpgw_store_writer_busy_seconds_total"] <= 0 {
		t.Errorf("metrics %v: want a transaction and some busy time", got)
	}
	if got["smtpgw_store_commit_seconds_count"] < 1 || got["smtpgw_store_commit_seconds_sum"] != got["smtpgw_store_writer_busy_seconds_total"] {
		t.Errorf("metrics %v: want the batch in the commit histogram, its sum the busy time", got)
	}
}
