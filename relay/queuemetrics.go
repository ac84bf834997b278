package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/store"
)

// queueCollector reports the queue as the store sees it, read at scrape
// time: recipients per state and the age of the oldest message waiting for
// delivery. On PostgreSQL every node reports the shared queue. A scrape
// that cannot read the store reports nothing for these metrics (and logs),
// so an alert on their absence catches a store that is down.
type queueCollector struct {
	st  store.Store
	log *slog.Logger
	// recipients and oldest describe the two metrics.
	recipients, oldest *prometheus.Desc
}

func newQueueCollector(st store.Store, log *slog.Logger) *queueCollector {
	return &queueCollector{
		st:  st,
		log: log,
		recipients: prometheus.NewDesc("smtpgw_queue_recipients",
			"Recipients in the queue by state (finished ones until relay.finished_retention prunes them).",
			[]string{"state"}, nil),
		oldest: prometheus.NewDesc("smtpgw_queue_oldest_waiting_seconds",
			"Age of the oldest message with a recipient still queued or deferred; 0 when none waits.",
			nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.recipients
	ch <- c.oldest
}

// Collect implements prometheus.Collector.
func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.st.Stats(ctx)
	if err != nil {
		c.log.Warn("metrics: read queue stats", "err", err)
		return
	}
	for _, state := range []string{store.StateQueued, store.StateDeferred, store.StateDelivered, store.StateBounced, store.StateExpired} {
		ch <- prometheus.MustNewConstMetric(c.recipients, prometheus.GaugeValue, float64(s.ByState[state]), state)
	}
	age := 0.0
	if !s.OldestQueued.IsZero() {
		age = time.Since(s.OldestQueued).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
}
