package teletracker

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestCapacityShortfallToldOnce: when the accounts of the process need
// more calls a second than its turns give (0.9 of the budget), status and
// the metrics say so, and a warning is logged once, when the need crosses
// the budget; when it falls back under, that is logged too.
func TestCapacityShortfallToldOnce(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	const warning = "need more calls a second than its budget gives"
	budget := DefaultCallsPerSecond * turnShare
	e.b.proc.addNeed(e.b, budget-1e-6) // the other mounts' accounts of the process, just within
	e.configureAccount("first", nil)   // one call an hour... less its margin: over
	if n := strings.Count(e.logs.String(), warning); n != 1 {
		t.Fatalf("%d warnings on crossing the budget, want 1", n)
	}
	e.configureAccount("second", nil)
	if n := strings.Count(e.logs.String(), warning); n != 1 {
		t.Fatalf("%d warnings once over the budget, want still 1", n)
	}
	needed, _ := e.b.proc.capacity()
	if needed <= budget || needed > budget+2.0/1800 { // each account a call per rotation, under an hour
		t.Fatalf("%v calls a second needed, budget %v", needed, budget)
	}
	for _, p := range []string{"status", "status/first"} {
		s := e.mustRequest(logical.ReadOperation, p, nil).Data
		if got := s["calls_per_second_needed"].(float64); math.Abs(got-needed) > 1e-9 || s["calls_per_second_budget"] != budget {
			t.Fatalf("%s: needed %v, budget %v; want %v and %v", p, got, s["calls_per_second_budget"], needed, budget)
		}
	}
	m := e.scrape()
	if got := value(t, m, "teletracker_calls_needed_per_second", ""); math.Abs(got-needed) > 1e-9 {
		t.Fatalf("teletracker_calls_needed_per_second = %v, want %v", got, needed)
	}
	if got := value(t, m, "teletracker_call_budget_per_second", ""); got != budget {
		t.Fatalf("teletracker_call_budget_per_second = %v, want %v", got, budget)
	}
	e.mustRequest(logical.DeleteOperation, "accounts/first", nil)
	e.mustRequest(logical.DeleteOperation, "accounts/second", nil)
	if !strings.Contains(e.logs.String(), "need no more calls a second than its budget gives") {
		t.Fatal("falling back under the budget was not logged")
	}
	if got, _ := e.b.proc.capacity(); math.Abs(got-(budget-1e-6)) > 1e-9 {
		t.Fatalf("deleted accounts still counted: %v needed", got)
	}
}

// TestNewFactoryRefusesBadCallsPerSecond: a budget outside 1..1000 calls
// a second (or no number at all) makes no mount: the pacer would hand out
// turns without end, or none.
func TestNewFactoryRefusesBadCallsPerSecond(t *testing.T) {
	for _, v := range []float64{0, -1, 0.5, 1000.5, math.NaN(), math.Inf(1), math.Inf(-1)} {
		conf := logical.TestBackendConfig()
		conf.StorageView = &logical.InmemStorage{}
		if b, err := NewFactory(v)(context.Background(), conf); err == nil || b != nil {
			t.Errorf("NewFactory(%v) made a mount", v)
		}
	}
	for _, v := range []float64{1, DefaultCallsPerSecond, 1000} {
		conf := logical.TestBackendConfig()
		conf.StorageView = &logical.InmemStorage{}
		if _, err := NewFactory(v)(context.Background(), conf); err != nil {
			t.Errorf("NewFactory(%v): %v", v, err)
		}
	}
}

// TestCleanedMountAddsNoNeed: a request that reaches a mount after Clean
// publishes its record again but adds no need to the process's (shared
// with every other mount), which Clean took the mount's out of.
func TestCleanedMountAddsNoNeed(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(time.Minute)
	e.b.clean(context.Background())
	if needed, _ := e.b.proc.capacity(); needed != 0 {
		t.Fatalf("setup: %v needed after Clean", needed)
	}
	_, _ = e.request(logical.UpdateOperation, "rotate", nil) // a request still routed to the old mount
	if needed, _ := e.b.proc.capacity(); needed != 0 {
		t.Errorf("the process needs %v calls a second for a mount that was cleaned", needed)
	}
}
