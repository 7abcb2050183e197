package teletracker

import (
	"bytes"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// metrics.go holds a mount's Prometheus metrics: counters and a histogram
// kept as calls and reads happen, and gauges read from the record when the
// metrics path is scraped. One plugin process serves every mount, so each
// mount has a registry of its own; no label comes from user input.

// outcomes are the values of a call counter's outcome label: see outcome.
var outcomes = []string{"success", "rejected", "failed", "unknown"}

// metrics is one mount's counters and histogram.
type metrics struct {
	// registry holds the collectors below, and nothing else.
	registry *prometheus.Registry
	// reads counts token reads; counting one is an atomic add.
	reads prometheus.Counter
	// refreshes and logins count calls to Teletracker by outcome.
	refreshes, logins *prometheus.CounterVec
	// latency is the time calls to Teletracker take, by op.
	latency *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		reads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "teletracker_token_reads_total", Help: "Token reads answered by this mount since the plugin started.",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "teletracker_refreshes_total", Help: "Calls to /auth/refresh by outcome: success, rejected (the refresh token was refused), failed, unknown (no answer: it may be spent).",
		}, []string{"outcome"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "teletracker_logins_total", Help: "Calls to /auth/login by outcome: success, rejected (the password was refused), failed, unknown.",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "teletracker_upstream_request_duration_seconds", Help: "Time calls to Teletracker took, by op (refresh, login).",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"op"}),
	}
	for _, o := range outcomes {
		m.refreshes.WithLabelValues(o)
		m.logins.WithLabelValues(o)
	}
	m.latency.WithLabelValues("refresh")
	m.latency.WithLabelValues("login")
	m.registry.MustRegister(m.reads, m.refreshes, m.logins, m.latency)
	return m
}

// observe counts a call of kind that took d and ended with err.
func (m *metrics) observe(kind actionKind, d time.Duration, err error) {
	op, calls := "refresh", m.refreshes
	if kind == actLogin {
		op, calls = "login", m.logins
	}
	m.latency.WithLabelValues(op).Observe(d.Seconds())
	calls.WithLabelValues(outcome(err)).Inc()
}

// outcome is a call's outcome label.
func outcome(err error) string {
	var ue *upstreamError
	switch {
	case err == nil:
		return "success"
	case errors.As(err, &ue) && ue.kind == failRejected:
		return "rejected"
	case errors.As(err, &ue) && ue.kind == failUnknown:
		return "unknown"
	}
	return "failed"
}

// expose is m, with r's gauges as of now, in the Prometheus text format,
// and its content type.
func (m *metrics) expose(r *record, now time.Time) ([]byte, string, error) {
	gauges := prometheus.NewRegistry()
	gauges.MustRegister(recordGauges{r: r, now: now})
	families, err := prometheus.Gatherers{m.registry, gauges}.Gather()
	if err != nil {
		return nil, "", err
	}
	format := expfmt.NewFormat(expfmt.TypeTextPlain)
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, format)
	for _, f := range families {
		if err := enc.Encode(f); err != nil {
			return nil, "", err
		}
	}
	return buf.Bytes(), string(format), nil
}

// The gauges' descriptions.
var (
	stateDesc = prometheus.NewDesc("teletracker_state",
		"1 for the mount's state as status reports it (unconfigured, healthy, degraded, reauth_required), 0 for the others.", []string{"state"}, nil)
	tokenExpiresDesc = prometheus.NewDesc("teletracker_token_expires_in_seconds",
		"Seconds until the bearer token expires (negative once it has); absent when none is held.", nil, nil)
	refreshExpiresDesc = prometheus.NewDesc("teletracker_refresh_token_expires_in_seconds",
		"Seconds until the refresh token expires; absent when unknown.", nil, nil)
	failuresDesc = prometheus.NewDesc("teletracker_consecutive_failures",
		"Failed attempts since the last success.", nil, nil)
	lastRotationDesc = prometheus.NewDesc("teletracker_last_rotation_timestamp_seconds",
		"When the bearer token held was obtained (Unix time); absent when none is held.", nil, nil)
)

// recordGauges reports one record's gauges as of now.
type recordGauges struct {
	r   *record
	now time.Time
}

func (g recordGauges) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(g, ch)
}

func (g recordGauges) Collect(ch chan<- prometheus.Metric) {
	state, r := stateUnconfigured, g.r
	if r.configured() {
		state = r.health(g.now)
	} else {
		r = &record{}
	}
	for _, s := range []string{stateUnconfigured, stateHealthy, stateDegraded, stateReauthRequired} {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, s)
	}
	if tl := r.timeline(); tl.held {
		ch <- prometheus.MustNewConstMetric(tokenExpiresDesc, prometheus.GaugeValue, tl.expires.Sub(g.now).Seconds())
		ch <- prometheus.MustNewConstMetric(lastRotationDesc, prometheus.GaugeValue, float64(r.ObtainedAt.UnixMilli())/1000)
	}
	if !r.RefreshTokenExpiresAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(refreshExpiresDesc, prometheus.GaugeValue, r.RefreshTokenExpiresAt.Sub(g.now).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(failuresDesc, prometheus.GaugeValue, float64(r.Failures))
}
