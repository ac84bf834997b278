package relay

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpgw/smtpgw/store"
)

// metrics are the relay's Prometheus collectors.
type metrics struct {
	// deliveries counts recipient outcomes by state (delivered, deferred,
	// bounced, expired).
	deliveries *prometheus.CounterVec
	// attempt observes the duration of one job: connect, transaction and
	// (for failures) everything before the outcome is known.
	attempt prometheus.Histogram
	// claimed counts recipients claimed from the queue.
	claimed prometheus.Counter
	// handedOff counts recipients taken straight from injection (Handoff).
	handedOff prometheus.Counter
	// inflight is the number of transactions running now.
	inflight prometheus.Gauge
	// dsns counts DSNs generated.
	dsns prometheus.Counter
	// finishFailures counts failed writes of delivery outcomes (each retry).
	finishFailures prometheus.Counter
	// inflowDelay observes how long Reserve waited for room (InFlowDelay),
	// for the calls that waited.
	inflowDelay prometheus.Histogram
}

// newMetrics creates the collectors and registers them on reg when it is
// not nil. Registering on a registry that already has them is an error.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "deliveries_total",
			Help: "Recipient delivery attempts by outcome (delivered, deferred, bounced, expired).",
		}, []string{"outcome"}),
		attempt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "attempt_duration_seconds",
			Help:    "Duration of one delivery transaction (one message to one destination domain).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}),
		claimed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "claimed_total",
			Help: "Recipients claimed from the queue.",
		}),
		handedOff: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "handed_off_total",
			Help: "Recipients taken to delivery straight from injection on this node, without a claim.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "inflight_transactions",
			Help: "Delivery transactions running now.",
		}),
		dsns: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "dsn_total",
			Help: "Delivery status notifications generated.",
		}),
		finishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "outcome_write_failures_total",
			Help: "Failed writes of delivery outcomes to the store (each is retried until the lease ends).",
		}),
		inflowDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "smtpgw", Subsystem: "relay", Name: "inflow_delay_seconds",
			Help:    "Time a received message waited for the relay to have room before it was stored (relay.in_flow_delay), for those that waited; one that waited the whole delay is stored for a later claim.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	for _, s := range []string{store.StateDelivered, store.StateDeferred, store.StateBounced, store.StateExpired} {
		m.deliveries.WithLabelValues(s)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.attempt, m.claimed, m.handedOff, m.inflight, m.dsns, m.finishFailures, m.inflowDelay} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("register relay metrics: %w (one Relay per registry)", err)
			}
			return nil, fmt.Errorf("register relay metrics: %w", err)
		}
	}
	return m, nil
}
