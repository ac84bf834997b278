package smtpd

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics counts what the SMTP side does. They live beside the code they
// count (maddy); New registers them on the caller's registry, if any.
type metrics struct {
	connections   *prometheus.CounterVec // by listener
	active        prometheus.Gauge
	rejectedConns prometheus.Counter
	auth          *prometheus.CounterVec // by outcome
	queued        prometheus.Counter
	bytes         prometheus.Counter
	replies       *prometheus.CounterVec // by command, code, enhanced code
	enqueue       prometheus.Histogram
	limit         *prometheus.CounterVec // by limit
	inflight      prometheus.Gauge       // bytes of the in-flight budget in use
	limited       *prometheus.CounterVec // by scope, window
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smtpgw_smtp_connections_total",
			Help: "SMTP connections accepted, by listener (submission, submissions).",
		}, []string{"listener"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "smtpgw_smtp_connections_active",
			Help: "SMTP connections currently open.",
		}),
		rejectedConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "smtpgw_smtp_connections_rejected_total",
			Help: "SMTP connections refused because max_connections was reached.",
		}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smtpgw_smtp_auth_total",
			Help: "AUTH attempts by outcome (success, unknown_key, revoked_key, expired_key, missing_grant, ip_not_allowed, bad_username, bad_subaccount, malformed, throttled, temporary_failure).",
		}, []string{"outcome"}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "smtpgw_smtp_messages_queued_total",
			Help: "Messages accepted and committed to the queue.",
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "smtpgw_smtp_message_bytes_total",
			Help: "Bytes of messages committed to the queue, as stored.",
		}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smtpgw_smtp_replies_total",
			Help: "Replies given by the session to MAIL, RCPT, DATA/BDAT and AUTH, by command, code and enhanced code.",
		}, []string{"command", "code", "enhanced"}),
		enqueue: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "smtpgw_smtp_enqueue_seconds",
			Help:    "Time from the end of DATA to the commit of the message (group commit included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smtpgw_smtp_limited_total",
			Help: "Messages refused at MAIL for a limit (451 4.7.1), by scope (key, subaccount, or node for smtp.key_rate_limit) and window (second, minute, hour, day, month).",
		}, []string{"scope", "window"}),
		limit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smtpgw_smtp_limit_total",
			Help: "Sessions, connections or messages stopped by a limit, by limit (connections_per_ip, junk_commands, auth_timeout, data_timeout, command_line, inflight_bytes, line_length, bare_line_ending, received_headers, header_bytes).",
		}, []string{"limit"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "smtpgw_smtp_inflight_bytes",
			Help: "Bytes of smtp.max_inflight_bytes held by messages being received and stored.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connections, m.active, m.rejectedConns, m.auth, m.queued, m.bytes, m.replies, m.enqueue, m.limited, m.limit, m.inflight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register smtpd metrics: %w", err)
		}
	}
	return m, nil
}

// reply counts the reply to one command: err is what the session returns
// (nil or a *smtp.SMTPError), ok is the code go-smtp sends for nil.
func (m *metrics) reply(command string, err error, ok int) {
	code, enh := strconv.Itoa(ok), "2.0.0"
	if se, isSE := err.(*smtp.SMTPError); isSE {
		code = strconv.Itoa(se.Code)
		enh = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	m.replies.WithLabelValues(command, code, enh).Inc()
}

// limitHit counts a message refused by one of the limits on its content.
func (m *metrics) limitHit(err error) {
	var name string
	switch {
	case errors.Is(err, ErrLineTooLong):
		name = "line_length"
	case errors.Is(err, ErrBareLineEnding):
		name = "bare_line_ending"
	case errors.Is(err, ErrHeaderTooBig):
		name = "header_bytes"
	case errors.Is(err, ErrTooManyHops):
		name = "received_headers"
	case errors.Is(err, errNoBudget):
		name = "inflight_bytes"
	default:
		return
	}
	m.limit.WithLabelValues(name).Inc()
}

// limitName names a connection-closing reply in the limit metric.
func limitName(e *smtp.SMTPError) string {
	switch e {
	case ErrTooManyFromIP:
		return "connections_per_ip"
	case ErrTooManyJunk:
		return "junk_commands"
	case ErrAuthTimeout:
		return "auth_timeout"
	case ErrDataTimeout:
		return "data_timeout"
	case ErrCommandTooLong:
		return "command_line"
	}
	return "other"
}
