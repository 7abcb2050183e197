package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/common/expfmt"
)

// TestMetricsScrape: Prometheus scrapes <mount>/metrics as Vault serves it,
// with a token whose policy (the example's) allows only that read; another
// token gets 403; after a rotation and a failed refresh of the default
// account and of a named one, the counters and the state gauges show them,
// the named account by name, and every series the alert rules read is
// there.
func TestMetricsScrape(t *testing.T) {
	defaultAccountOnly(t, "it scrapes a named account (fleet-7) beside the default one in every run")
	t.Parallel()
	c := env.dev.client
	f := startFake(t)
	enableMount(t, c, "teletracker-eu") // a mount the example policy names
	configure(t, c, "teletracker-eu", f, nil)
	if _, err := c.Logical().Write("teletracker-eu/accounts/fleet-7", map[string]interface{}{"base_url": f.url, "username": "demo", "password": "demo-password"}); err != nil {
		t.Fatalf("configure fleet-7: %v", err)
	}
	rotate(t, c, "teletracker-eu")
	time.Sleep(10 * time.Second) // the floor after a refresh
	f.admin(t, http.MethodPost, "/_fake/fail", map[string]interface{}{"endpoint": "/auth/refresh", "count": 2, "fault": map[string]interface{}{"status": 503}}, nil)
	for _, p := range []string{"teletracker-eu/rotate", "teletracker-eu/rotate/fleet-7"} {
		if _, err := c.Logical().Write(p, nil); statusCode(err) != http.StatusBadGateway {
			t.Fatalf("%s against a failing Teletracker: %v", p, err)
		}
	}

	policy, err := os.ReadFile(filepath.Join(env.repoRoot, "examples", "prometheus", "metrics-policy.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().PutPolicy("teletracker-metrics", string(policy)); err != nil {
		t.Fatal(err)
	}
	scraper := token(t, c, "teletracker-metrics")
	other := token(t, c, "default")

	if code, _, _ := scrape(t, other); code != http.StatusForbidden {
		t.Fatalf("a token without the policy scraped the metrics: %d", code)
	}
	code, contentType, body := scrape(t, scraper)
	if code != http.StatusOK || !strings.HasPrefix(contentType, "text/plain; version=0.0.4") {
		t.Fatalf("scrape: %d %q\n%s", code, contentType, body)
	}
	var p expfmt.TextParser
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, body)
	}
	for series, want := range map[string]string{
		`teletracker_refreshes_total{outcome="success"}`:                "1",
		`teletracker_refreshes_total{outcome="failed"}`:                 "2",
		`teletracker_logins_total{outcome="success"}`:                   "2",
		`teletracker_state{state="degraded"}`:                           "1",
		`teletracker_state{state="healthy"}`:                            "0",
		`teletracker_consecutive_failures`:                              "1",
		`teletracker_accounts{state="degraded"}`:                        "1",
		`teletracker_accounts{state="healthy"}`:                         "0",
		`teletracker_account_state{account="fleet-7",state="degraded"}`: "1",
		`teletracker_account_consecutive_failures{account="fleet-7"}`:   "1",
		`teletracker_call_budget_per_second`:                            "9",
	} {
		if !strings.Contains(body, "\n"+series+" "+want+"\n") {
			t.Errorf("%s is not %s:\n%s", series, want, body)
		}
	}
	if families["teletracker_upstream_request_duration_seconds"] == nil || families["teletracker_token_expires_in_seconds"] == nil {
		t.Fatalf("families %v", families)
	}
	// A rule that reads a series the engine does not serve never fires.
	rules, err := os.ReadFile(filepath.Join(env.repoRoot, "examples", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`\bteletracker_[a-z_]+`).FindAllString(string(rules), -1) {
		if families[name] == nil {
			t.Errorf("alerts.yml reads %s, which the scrape does not have:\n%s", name, body)
		}
	}
}

// token creates a token with policy alone.
func token(t *testing.T, c *api.Client, policy string) string {
	t.Helper()
	s, err := c.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}, NoDefaultPolicy: policy != "default"})
	if err != nil {
		t.Fatal(err)
	}
	return s.Auth.ClientToken
}

// scrape GETs teletracker-eu/metrics with token as Prometheus does (a bearer
// token in the Authorization header), and returns status, type and body.
func scrape(t *testing.T, token string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.dev.addr+"/v1/teletracker-eu/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}
