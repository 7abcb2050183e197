package teletracker

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// scrape reads the mount's metrics, checks the raw answer, and parses it.
func (e *testEnv) scrape() map[string]*dto.MetricFamily {
	e.t.Helper()
	resp := e.mustRequest(logical.ReadOperation, "metrics", nil)
	body, _ := resp.Data[logical.HTTPRawBody].([]byte)
	if ct, _ := resp.Data[logical.HTTPContentType].(string); !strings.HasPrefix(ct, "text/plain; version=0.0.4") || resp.Data[logical.HTTPStatusCode] != http.StatusOK {
		e.t.Fatalf("content type %q, status %v", ct, resp.Data[logical.HTTPStatusCode])
	}
	for _, secret := range append(e.fake.IssuedSecrets(), "demo-password") {
		if secret != "" && bytes.Contains(body, []byte(secret)) {
			e.t.Fatal("a secret is in the metrics")
		}
	}
	var p expfmt.TextParser
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		e.t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}
	return families
}

// value is the value of the series of family name with the given label
// (name=value, or "" for none); it fails the test when there is none.
func value(t *testing.T, families map[string]*dto.MetricFamily, name, label string) float64 {
	t.Helper()
	for _, m := range families[name].GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		if strings.Join(labels, ",") != label {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no series %s{%s}", name, label)
	return 0
}

// TestMetricsMoveWithEvents: every counter moves when its event happens, and
// the gauges follow the record.
func TestMetricsMoveWithEvents(t *testing.T) {
	e := newTestEnv(t, withFake(func(o *fakett.Options) { o.RefreshLifetime = 48 * time.Hour }))
	e.defaultOnly() // the default account's gauges; a named one's: TestMetricsNamedAccounts
	e.configure(map[string]interface{}{"request_timeout": 1})
	m := e.scrape()
	for _, o := range outcomes {
		if value(t, m, "teletracker_refreshes_total", "outcome="+o) != 0 || value(t, m, "teletracker_logins_total", "outcome="+o) != float64(map[string]int{"success": 1}[o]) {
			t.Fatalf("outcome %s at the start", o)
		}
	}
	for i := 0; i < 3; i++ {
		e.readToken()
	}
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "rotate", nil) // success
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: 503})
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // failed
	m = e.scrape()
	if value(t, m, "teletracker_consecutive_failures", "") != 1 || value(t, m, "teletracker_state", "state=degraded") != 1 ||
		value(t, m, "teletracker_state", "state=healthy") != 0 {
		t.Fatal("the failure is not in the gauges")
	}
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Delay: 3 * time.Second})
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // unknown: a login follows later
	e.clock.Add(time.Minute)
	e.mustRequest(logical.UpdateOperation, "rotate", nil) // the login
	e.clock.Add(time.Minute)
	e.fake.RevokeAll()
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // rejected
	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "rotate", nil) // the login

	m = e.scrape()
	want := map[string]float64{
		"teletracker_token_reads_total|":                           3,
		"teletracker_refreshes_total|outcome=success":              1,
		"teletracker_refreshes_total|outcome=failed":               1,
		"teletracker_refreshes_total|outcome=unknown":              1,
		"teletracker_refreshes_total|outcome=rejected":             1,
		"teletracker_logins_total|outcome=success":                 3,
		"teletracker_logins_total|outcome=failed":                  0,
		"teletracker_upstream_request_duration_seconds|op=refresh": 4,
		"teletracker_upstream_request_duration_seconds|op=login":   3,
		"teletracker_consecutive_failures|":                        0,
		"teletracker_state|state=healthy":                          1,
		"teletracker_state|state=degraded":                         0,
		"teletracker_state|state=reauth_required":                  0,
		"teletracker_state|state=unconfigured":                     0,
		"teletracker_token_expires_in_seconds|":                    3600,
		"teletracker_refresh_token_expires_in_seconds|":            48 * 3600,
		"teletracker_last_rotation_timestamp_seconds|":             float64(e.clock.Now().Unix()),
	}
	for k, v := range want {
		name, label, _ := strings.Cut(k, "|")
		if got := value(t, m, name, label); got != v {
			t.Errorf("%s{%s} = %v, want %v", name, label, got, v)
		}
	}
}

// TestMetricsStates: the state gauge and the token gauges of a mount that
// is unconfigured, and of one that needs re-authentication.
func TestMetricsStates(t *testing.T) {
	e := newTestEnv(t)
	e.defaultOnly()
	m := e.scrape()
	if value(t, m, "teletracker_state", "state=unconfigured") != 1 || m["teletracker_token_expires_in_seconds"] != nil {
		t.Fatalf("unconfigured: %v", m)
	}
	e.configure(nil)
	e.mustRequest(logical.UpdateOperation, "config", map[string]interface{}{"password": ""})
	e.fake.RevokeAll()
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	m = e.scrape()
	if value(t, m, "teletracker_state", "state=reauth_required") != 1 || value(t, m, "teletracker_token_expires_in_seconds", "") != 11*60 {
		t.Fatalf("reauth_required with 11 minutes left: %v", m)
	}
}

// TestMetricsMountsApart: two mounts in one process share no values.
func TestMetricsMountsApart(t *testing.T) {
	a, b := newTestEnv(t), newTestEnv(t)
	a.configure(nil)
	b.configure(nil)
	for i := 0; i < 5; i++ {
		a.readToken()
	}
	if got := value(t, b.scrape(), "teletracker_token_reads_total", ""); got != 0 {
		t.Fatalf("mount b counted %v of mount a's reads", got)
	}
	if got := value(t, a.scrape(), "teletracker_token_reads_total", ""); got != 5 {
		t.Fatalf("mount a counted %v reads, want 5", got)
	}
}

// A client that cannot be built (a stored ca_cert TLS would ignore) is not
// counted as a call, nor timed: Teletracker was never called.
func TestMetricsCountOnlyCallsMade(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.storeUnusableCACert(t)
	e.clock.Add(49 * time.Minute)
	_ = e.tick()
	m := e.scrape()
	made := e.fake.Stats().RefreshCalls
	counted := 0.0
	for _, o := range outcomes {
		counted += value(t, m, "teletracker_refreshes_total", "outcome="+o)
	}
	if counted != float64(made) || value(t, m, "teletracker_upstream_request_duration_seconds", "op=refresh") != float64(made) {
		t.Fatalf("metrics count %v refresh calls (histogram %v), Teletracker saw %d", counted,
			value(t, m, "teletracker_upstream_request_duration_seconds", "op=refresh"), made)
	}
}

// accountSeries is the series of m that carry an account label, as
// "family{account}".
func accountSeries(m map[string]*dto.MetricFamily) []string {
	var series []string
	for name, f := range m {
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "account" {
					series = append(series, name+"{"+l.GetValue()+"}")
				}
			}
		}
	}
	return series
}

// TestMetricsNamedAccounts: many healthy named accounts add no series of
// their own, only the count by state; a degraded or reauth_required one
// gets its series (state, failures, token expiry, with its name), and
// loses them once healthy again.
func TestMetricsNamedAccounts(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.fastBudget()
	e.configure(nil)
	e.fleet("ok", 30, nil)
	e.configureAccount("sick", nil)
	e.configureAccount("lost", nil)
	m := e.scrape()
	if s := accountSeries(m); len(s) != 0 {
		t.Fatalf("healthy accounts have series of their own: %v", s)
	}
	if got := value(t, m, "teletracker_accounts", "state=healthy"); got != 32 {
		t.Fatalf("teletracker_accounts{state=healthy} = %v, want 32", got)
	}
	healthySize := len(m)

	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusServiceUnavailable})
	_, _ = e.request(logical.UpdateOperation, "rotate/sick", nil) // degraded
	e.mustRequest(logical.UpdateOperation, "accounts/lost", map[string]interface{}{"password": ""})
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusUnauthorized})
	_, _ = e.request(logical.UpdateOperation, "rotate/lost", nil) // refused, no password: reauth_required
	m = e.scrape()
	want := map[string]float64{
		"teletracker_account_state|account=sick,state=degraded":        1,
		"teletracker_account_state|account=lost,state=reauth_required": 1,
		"teletracker_account_consecutive_failures|account=sick":        1,
		"teletracker_account_token_expires_in_seconds|account=sick":    59 * 60,
		"teletracker_accounts|state=healthy":                           30,
		"teletracker_accounts|state=degraded":                          1,
		"teletracker_accounts|state=reauth_required":                   1,
		"teletracker_state|state=healthy":                              1, // the default account
	}
	for k, v := range want {
		name, label, _ := strings.Cut(k, "|")
		if got := value(t, m, name, label); got != v {
			t.Errorf("%s{%s} = %v, want %v", name, label, got, v)
		}
	}
	for _, s := range accountSeries(m) {
		if !strings.HasSuffix(s, "{sick}") && !strings.HasSuffix(s, "{lost}") {
			t.Errorf("a healthy account has a series: %s", s)
		}
	}

	e.clock.Add(minCallInterval)
	e.mustRequest(logical.UpdateOperation, "rotate/sick", nil)
	e.configureAccount("lost", nil)
	m = e.scrape()
	if s := accountSeries(m); len(s) != 0 {
		t.Fatalf("accounts healthy again keep series: %v", s)
	}
	if got := value(t, m, "teletracker_accounts", "state=healthy"); got != 32 || len(m) != healthySize {
		t.Fatalf("teletracker_accounts{state=healthy} = %v, %d families (%d before)", got, len(m), healthySize)
	}
}

// TestAlertRunbooks: every alert of examples/prometheus/alerts.yml has a
// README section named after it, and its runbook_url leads to a heading of
// README.md (GitHub's anchor for it), so no page lands on the top of the
// file.
func TestAlertRunbooks(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join("examples", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors, punct := map[string]bool{}, regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	fenced := false
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		heading := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		anchors[strings.ReplaceAll(punct.ReplaceAllString(heading, ""), " ", "-")] = true
	}
	names := regexp.MustCompile(`(?m)^\s*- alert: (\S+)$`).FindAllStringSubmatch(string(rules), -1)
	urls := regexp.MustCompile(`(?m)^\s*runbook_url: \S+/README\.md#(\S+)$`).FindAllStringSubmatch(string(rules), -1)
	if len(names) == 0 || len(names) != len(urls) {
		t.Fatalf("%d alerts, %d runbook_urls into README.md", len(names), len(urls))
	}
	for i, n := range names {
		if !anchors[strings.ToLower(n[1])] {
			t.Errorf("README.md has no section ### `%s`", n[1])
		}
		if !anchors[urls[i][1]] {
			t.Errorf("%s's runbook_url leads to #%s, which is no heading of README.md", n[1], urls[i][1])
		}
	}
}

// TestMetricsCountAccountWhoseEntryCannotBeRead: an account whose entry
// storage cannot give back is degraded, in the metrics as in status:
// counted by state, with a series of its own for its alert.
func TestMetricsCountAccountWhoseEntryCannotBeRead(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("broken", nil)
	e.configureAccount("fine", nil)
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == accountsPrefix+"broken" }}
	e.b.invalidate(context.Background(), accountsPrefix+"broken")
	e.clock.Add(51 * time.Minute)
	_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: s})
	st := e.mustRequest(logical.ReadOperation, "status/broken", nil).Data
	if st["state"] != stateDegraded {
		t.Fatalf("setup: status/broken %v", st)
	}
	f := e.scrape()
	total := 0.0
	for _, state := range accountStates {
		total += value(t, f, "teletracker_accounts", "state="+state)
	}
	if total != 2 {
		t.Errorf("teletracker_accounts counts %v accounts of 2", total)
	}
	found := false
	for _, m := range f["teletracker_account_state"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "account" && l.GetValue() == "broken" {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no teletracker_account_state series for broken, which status says is %v (%v)", st["state"], st["last_error"])
	}
}

// TestMetricsSurviveDefaultAccountsStorageFailure: on a mount that uses
// named accounts alone, a scrape reads the default account's entry from
// storage; when that read fails, the scrape still answers, with the named
// accounts' series and counts.
func TestMetricsSurviveDefaultAccountsStorageFailure(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("fine", nil)
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == recordKey }}
	resp, err := e.handle(s, logical.ReadOperation, "metrics", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("metrics with the (unused) default account's entry unreadable: resp=%v err=%v", resp, err)
	}
}
