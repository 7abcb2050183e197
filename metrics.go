package teletracker

import (
	"bytes"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// metrics.go holds a mount's Prometheus metrics: counters and a histogram
// kept as calls and reads happen (all its accounts together), and gauges
// read from the records when the metrics path is scraped: the default
// account's, named accounts counted by state, and a series per named
// account only while it needs attention, so that a scrape of a mount with
// 10,000 healthy accounts is about as large as one with one. One plugin
// process serves every mount, so each mount has a registry of its own; the
// only label from user input is a validated account name.

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

// expose is m, with the gauges of the mount at now (metrics.go's
// mountGauges), in the Prometheus text format, and its content type.
func (m *metrics) expose(g mountGauges) ([]byte, string, error) {
	gauges := prometheus.NewRegistry()
	gauges.MustRegister(g)
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
		"1 for the default account's state as status reports it (unconfigured, healthy, degraded, reauth_required), 0 for the others.", []string{"state"}, nil)
	tokenExpiresDesc = prometheus.NewDesc("teletracker_token_expires_in_seconds",
		"Seconds until the default account's bearer token expires (negative once it has); absent when none is held.", nil, nil)
	refreshExpiresDesc = prometheus.NewDesc("teletracker_refresh_token_expires_in_seconds",
		"Seconds until the default account's refresh token expires; absent when unknown.", nil, nil)
	failuresDesc = prometheus.NewDesc("teletracker_consecutive_failures",
		"The default account's failed attempts since the last success.", nil, nil)
	lastRotationDesc = prometheus.NewDesc("teletracker_last_rotation_timestamp_seconds",
		"When the default account's bearer token was obtained (Unix time); absent when none is held.", nil, nil)
	accountsDesc = prometheus.NewDesc("teletracker_accounts",
		"Named accounts of the mount by state (healthy, degraded, reauth_required).", []string{"state"}, nil)
	accountStateDesc = prometheus.NewDesc("teletracker_account_state",
		"1 for each named account that needs attention (degraded or reauth_required), with its state; absent for healthy ones.", []string{"account", "state"}, nil)
	accountExpiresDesc = prometheus.NewDesc("teletracker_account_token_expires_in_seconds",
		"Seconds until the bearer token of a named account that needs attention expires; absent for healthy ones.", []string{"account"}, nil)
	accountFailuresDesc = prometheus.NewDesc("teletracker_account_consecutive_failures",
		"Failed attempts since the last success of a named account that needs attention; absent for healthy ones.", []string{"account"}, nil)
	neededDesc = prometheus.NewDesc("teletracker_calls_needed_per_second",
		"Calls a second all accounts of the plugin process need to keep their sessions, one a rotation.", nil, nil)
	budgetDesc = prometheus.NewDesc("teletracker_call_budget_per_second",
		"Calls a second the plugin process's turns give (-calls-per-second less a tenth).", nil, nil)
)

// accountStates are the states a named account is counted in.
var accountStates = []string{stateHealthy, stateDegraded, stateReauthRequired}

// mountGauges reports a mount's gauges as of now: its default account's
// record, its named accounts' (by name), and the process's capacity.
type mountGauges struct {
	def            *record
	named          map[string]*record
	now            time.Time
	needed, budget float64
	// defUnreadable says the default account's record could not be read,
	// and unreadable names the named accounts' that could not: degraded.
	defUnreadable bool
	unreadable    []string
}

func (g mountGauges) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(g, ch)
}

func (g mountGauges) Collect(ch chan<- prometheus.Metric) {
	state, r := stateUnconfigured, g.def
	switch {
	case g.defUnreadable:
		state, r = stateDegraded, &record{}
	case r.configured():
		state = r.health(g.now)
	default:
		r = &record{}
	}
	for _, s := range []string{stateUnconfigured, stateHealthy, stateDegraded, stateReauthRequired} {
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, oneIf(s == state), s)
	}
	if tl := r.timeline(); tl.held {
		ch <- prometheus.MustNewConstMetric(tokenExpiresDesc, prometheus.GaugeValue, tl.expires.Sub(g.now).Seconds())
		ch <- prometheus.MustNewConstMetric(lastRotationDesc, prometheus.GaugeValue, float64(r.ObtainedAt.UnixMilli())/1000)
	}
	if !r.RefreshTokenExpiresAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(refreshExpiresDesc, prometheus.GaugeValue, r.RefreshTokenExpiresAt.Sub(g.now).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(failuresDesc, prometheus.GaugeValue, float64(r.Failures))

	counts := map[string]float64{}
	for name, r := range g.named {
		state := r.health(g.now)
		counts[state]++
		if state == stateHealthy {
			continue
		}
		// Validated account names are the one label from user input.
		ch <- prometheus.MustNewConstMetric(accountStateDesc, prometheus.GaugeValue, 1, name, state)
		ch <- prometheus.MustNewConstMetric(accountFailuresDesc, prometheus.GaugeValue, float64(r.Failures), name)
		if tl := r.timeline(); tl.held {
			ch <- prometheus.MustNewConstMetric(accountExpiresDesc, prometheus.GaugeValue, tl.expires.Sub(g.now).Seconds(), name)
		}
	}
	for _, name := range g.unreadable {
		counts[stateDegraded]++
		ch <- prometheus.MustNewConstMetric(accountStateDesc, prometheus.GaugeValue, 1, name, stateDegraded)
	}
	for _, s := range accountStates {
		ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, counts[s], s)
	}
	ch <- prometheus.MustNewConstMetric(neededDesc, prometheus.GaugeValue, g.needed)
	ch <- prometheus.MustNewConstMetric(budgetDesc, prometheus.GaugeValue, g.budget)
}

// oneIf is 1 for true, 0 for false.
func oneIf(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
