package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/store"
)

// storeCollector reports the store's group committer (store.CommitStats):
// one writer per process that every SMTP session's message and every
// delivery outcome goes through, so its utilisation is the node's
// injection headroom.
type storeCollector struct {
	st                                store.Store
	transactions, items, busy, commit *prometheus.Desc
}

func newStoreCollector(st store.Store) *storeCollector {
	return &storeCollector{
		st: st,
		transactions: prometheus.NewDesc("smtpgw_store_transactions_total",
			"Group-commit transactions this node ran for messages and delivery outcomes.", nil, nil),
		items: prometheus.NewDesc("smtpgw_store_transaction_items_total",
			"Messages and delivery-outcome calls written by those transactions.", nil, nil),
		busy: prometheus.NewDesc("smtpgw_store_writer_busy_seconds_total",
			"Time the group committer spent writing and committing batches; its rate is the committer's utilisation.", nil, nil),
		commit: prometheus.NewDesc("smtpgw_store_commit_seconds",
			"Time the group committer spent on each batch, writing it and committing it: every session whose message is in the batch waits that long for its 250.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.transactions
	ch <- c.items
	ch <- c.busy
	ch <- c.commit
}

// Collect implements prometheus.Collector.
func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.st.CommitStats()
	ch <- prometheus.MustNewConstMetric(c.transactions, prometheus.CounterValue, float64(s.Transactions))
	ch <- prometheus.MustNewConstMetric(c.items, prometheus.CounterValue, float64(s.Items))
	ch <- prometheus.MustNewConstMetric(c.busy, prometheus.CounterValue, s.Busy.Seconds())
	buckets := make(map[float64]uint64, len(store.CommitBuckets))
	var n uint64
	for i, le := range store.CommitBuckets {
		n += uint64(s.Batches[i])
		buckets[le.Seconds()] = n
	}
	n += uint64(s.Batches[len(store.CommitBuckets)])
	ch <- prometheus.MustNewConstHistogram(c.commit, n, s.Busy.Seconds(), buckets)
}
