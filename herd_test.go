package teletracker

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// herd_test.go is the herd of issue 18 by simulation: one mount of the real
// engine (its schedule, decide, settle, pacer and the spacing of sends)
// holding N named accounts against the fake Teletracker in process, on a
// virtual clock that moves only when the engine sleeps (for its turn or
// between sends) and when the simulation waits for Vault's next tick. The
// accounts are set up one after another as fast as the default budget's
// turns allow, so that they fall due together, with Vault's tick coming
// every minute in between; then ticks alone until every account has
// rotated as often as asked (or, over the budget, for as long as asked).
//
// The calls are made one at a time: a tick brings its due accounts up to
// date with one worker (the order is the same as with many: the token that
// stops being served first goes first, and a tick takes at most as many as
// the turns give in maxPaceWait), and a config write and a tick do not
// overlap. make unit runs the herds of herdScenariosUnit; make bench-scale
// runs the larger ones with -herd.scenarios and writes what they found
// with -herd.out.

var (
	herdScenarios = flag.String("herd.scenarios", "", "simulated herds to run instead of the unit ones: accounts:lifetime[:rotations|:for=duration], comma-separated (e.g. 10000:1h:2,100000:1h:for=4h)")
	herdOut       = flag.String("herd.out", "", "write the simulated herds' results here as JSON")
)

// herdScenario is one simulated herd.
type herdScenario struct {
	// Accounts is how many; Lifetime their tokens'.
	Accounts int           `json:"accounts"`
	Lifetime time.Duration `json:"lifetime_ns"`
	// Rotations is how many rotations of every account to watch; when 0,
	// the run lasts For after the setup instead (a herd over the budget).
	Rotations int64         `json:"rotations"`
	For       time.Duration `json:"for_ns"`
}

// herdScenariosUnit are make unit's: 1,000 accounts with 10-minute tokens,
// within the budget, and 1,000 with 2-minute ones, far over it.
var herdScenariosUnit = []herdScenario{
	{Accounts: 1000, Lifetime: 10 * time.Minute, Rotations: 2},
	{Accounts: 1000, Lifetime: 2 * time.Minute, For: 10 * time.Minute},
}

// herdResult is what one simulated herd did.
type herdResult struct {
	herdScenario
	// Budget is the process's calls a second; Turns what its turns give.
	Budget float64 `json:"budget"`
	Turns  float64 `json:"turns"`
	// NeededMax is the most calls a second the accounts needed, as status
	// and the metrics report it (sampled at every tick).
	NeededMax float64 `json:"needed_max"`
	// SetupSeconds is the virtual time the config writes took;
	// SimulatedSeconds the whole run's; WallSeconds what it took here.
	SetupSeconds     float64 `json:"setup_seconds"`
	SimulatedSeconds float64 `json:"simulated_seconds"`
	WallSeconds      float64 `json:"wall_seconds"`
	Ticks            int     `json:"ticks"`
	// What the fake counted over the whole run.
	Logins       int64 `json:"logins"`
	RefreshCalls int64 `json:"refresh_calls"`
	Reused       int64 `json:"reused"`
	Rejected     int64 `json:"rejected"`
	Late         int64 `json:"late"`
	// PeakPerSecond is the most login and refresh calls in one second of
	// the virtual clock; SecondsOver the seconds with more than the budget.
	PeakPerSecond int64 `json:"peak_per_s"`
	SecondsOver   int   `json:"seconds_over"`
	// Rotations of each account (its refresh_count): their sum, least, most.
	RotationsSum int64 `json:"rotations_sum"`
	MinRotations int64 `json:"min_rotations"`
	MaxRotations int64 `json:"max_rotations"`
	// Unserved counts, over every tick, the accounts whose token was not
	// served when the tick came; UnservedAccounts the accounts that were
	// so at least once; FirstUnservedAt the first such tick (seconds from
	// the start, -1 for none).
	Unserved         int64   `json:"unserved"`
	UnservedAccounts int     `json:"unserved_accounts"`
	FirstUnservedAt  float64 `json:"first_unserved_at_s"`
	// WarnedAt is when the log first said the accounts need more than
	// the budget (seconds from the start, -1 for never); OverAt when the
	// needed calls first exceeded the turns at a tick.
	WarnedAt float64 `json:"warned_at_s"`
	OverAt   float64 `json:"over_at_s"`
	// Warnings counts the other warnings and errors logged.
	Warnings int `json:"warnings"`
	// Unhealthy counts accounts not healthy at the end.
	Unhealthy int `json:"unhealthy"`
	// Problems are where it fell short of the engine's promises (checkHerd).
	Problems []string `json:"problems"`
}

// herdClock is the simulation's clock; sleeping on it moves it on.
type herdClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *herdClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// advanceTo moves the clock to t, if it is later.
func (c *herdClock) advanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = later(c.t, t)
}

// sleep is the engine's sleeper on this clock: calls are made one at a
// time, so whoever sleeps is the only one waiting, and the time it waits
// passes at once.
func (c *herdClock) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.t = c.t.Add(max(d, 0))
	c.mu.Unlock()
	return nil
}

// handlerTransport sends requests to an http.Handler in process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, req)
	return rec.Result(), nil
}

// herdLog watches the engine's warnings on the virtual clock.
type herdLog struct {
	mu       sync.Mutex
	clock    *herdClock
	start    time.Time
	warnedAt float64
	others   int
	first    string
}

func (l *herdLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case bytes.Contains(p, []byte("need more calls a second than its budget gives")):
		if l.warnedAt < 0 {
			l.warnedAt = l.clock.now().Sub(l.start).Seconds()
		}
	case bytes.Contains(p, []byte("need no more calls a second")):
	default:
		if l.others++; l.first == "" {
			l.first = string(p)
		}
	}
	return len(p), nil
}

// runHerd simulates sc.
func runHerd(t testing.TB, sc herdScenario) herdResult {
	wall := time.Now()
	clock := &herdClock{t: testStart}
	fake := fakett.New(fakett.Options{Now: clock.now, TokenLifetime: sc.Lifetime})
	logs := &herdLog{clock: clock, start: testStart, warnedAt: -1}
	conf := logical.TestBackendConfig()
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Warn})
	storage := &logical.InmemStorage{}
	conf.StorageView = storage
	p := newProcess(DefaultCallsPerSecond)
	p.roundTripper = handlerTransport{fake}
	b := newBackend(p)
	b.now, b.mono, b.sleep = clock.now, clock.now, clock.sleep
	b.storage = storage
	b.tickWorkers = 1
	ctx := context.Background()
	if err := b.Setup(ctx, conf); err != nil {
		t.Fatal(err)
	}
	defer b.Cleanup(ctx)

	res := herdResult{herdScenario: sc, Budget: p.budget, Turns: p.turns(), FirstUnservedAt: -1, OverAt: -1, MinRotations: -1}
	names := make([]string, sc.Accounts)
	for i := range names {
		names[i] = fmt.Sprintf("h%06d", i+1)
	}
	accounts := make([]*account, sc.Accounts)
	unserved := make([]bool, sc.Accounts)
	nextTick := testStart.Add(tickInterval)
	// tick runs Vault's tick when its time has come, after looking at
	// every account as the tick finds it.
	tick := func() {
		now := clock.now()
		if now.Before(nextTick) {
			return
		}
		at := now.Sub(testStart).Seconds()
		for i, a := range accounts {
			if a == nil {
				continue // not set up yet
			}
			if st := a.snap.Load(); st != nil && !st.tl.served(now) {
				res.Unserved++
				if !unserved[i] {
					unserved[i] = true
					res.UnservedAccounts++
				}
				if res.FirstUnservedAt < 0 {
					res.FirstUnservedAt = at
				}
			}
		}
		needed, budget := p.capacity()
		if needed > budget && res.OverAt < 0 {
			res.OverAt = at
		}
		res.NeededMax = max(res.NeededMax, needed)
		if err := b.periodicFunc(ctx, &logical.Request{Storage: storage}); err != nil {
			t.Fatalf("tick at +%.0f s: %v", at, err)
		}
		res.Ticks++
		nextTick = nextTick.Add(tickInterval)
	}

	for i, name := range names {
		tick()
		_, err := b.HandleRequest(ctx, &logical.Request{
			Operation: logical.UpdateOperation, Path: accountsPrefix + name, Storage: storage,
			Data: map[string]interface{}{"base_url": "http://127.0.0.1:1", "username": "demo", "password": "demo-password"},
		})
		if err != nil {
			t.Fatalf("setting up account %s at +%v: %v", name, clock.now().Sub(testStart), err)
		}
		accounts[i] = b.account(name)
	}
	res.SetupSeconds = clock.now().Sub(testStart).Seconds()

	rotations := func() (sum, least, most int64, unhealthy int) {
		least = -1
		now := clock.now()
		for _, a := range accounts {
			st := a.snap.Load()
			var c int64
			if st != nil {
				c = st.rec.RefreshCount
				if st.rec.health(now) != stateHealthy {
					unhealthy++
				}
			} else {
				unhealthy++
			}
			sum += c
			most = max(most, c)
			if least < 0 || c < least {
				least = c
			}
		}
		return sum, least, most, unhealthy
	}
	end := clock.now().Add(sc.For)
	if sc.Rotations > 0 {
		end = clock.now().Add(time.Duration(sc.Rotations+1)*sc.Lifetime + 10*tickInterval)
	}
	for clock.now().Before(end) {
		clock.advanceTo(nextTick)
		tick()
		if sc.Rotations > 0 && res.Ticks%5 == 0 {
			if _, least, _, _ := rotations(); least >= sc.Rotations {
				break
			}
		}
	}
	res.SimulatedSeconds = clock.now().Sub(testStart).Seconds()
	res.RotationsSum, res.MinRotations, res.MaxRotations, res.Unhealthy = rotations()

	st := fake.Stats()
	res.Logins, res.RefreshCalls = st.LoginCalls, st.RefreshCalls
	res.Reused, res.Rejected, res.Late = st.ReusedRefreshTokens, st.RejectedRefreshes, st.LateRefreshes
	for _, s := range st.AuthCallsPerSecond {
		res.PeakPerSecond = max(res.PeakPerSecond, s.Calls)
		if float64(s.Calls) > p.budget {
			res.SecondsOver++
		}
	}
	logs.mu.Lock()
	res.WarnedAt, res.Warnings = logs.warnedAt, logs.others
	if logs.first != "" {
		t.Logf("%d: first other warning: %s", sc.Accounts, strings.TrimSpace(logs.first))
	}
	logs.mu.Unlock()
	res.WallSeconds = time.Since(wall).Seconds()
	return res
}

// checkHerd says where res falls short of what the engine promises:
// within the budget, every account refreshed once per rotation, none late,
// never more calls a second than the budget; over it, the log says so
// before any account's token stops being served.
func checkHerd(res herdResult) []string {
	var problems []string
	if res.PeakPerSecond > int64(res.Budget) {
		problems = append(problems, fmt.Sprintf("%d calls in one second, over the budget of %.0f", res.PeakPerSecond, res.Budget))
	}
	if res.Reused > 0 || res.Rejected > 0 || res.Logins != int64(res.Accounts) {
		problems = append(problems, fmt.Sprintf("%d refresh tokens re-used, %d rejected, %d logins for %d accounts", res.Reused, res.Rejected, res.Logins, res.Accounts))
	}
	if res.NeededMax > res.Turns {
		if res.WarnedAt < 0 || res.FirstUnservedAt >= 0 && res.FirstUnservedAt < res.WarnedAt {
			problems = append(problems, fmt.Sprintf("over the budget, warned at %+.0f s, a token first unserved at %+.0f s", res.WarnedAt, res.FirstUnservedAt))
		}
		return problems
	}
	if res.Late > 0 || res.Unserved > 0 {
		problems = append(problems, fmt.Sprintf("within the budget (%.2f calls a second needed of %.1f), %d refreshes late, %d accounts without a token served at some tick (first at %+.0f s), never warned",
			res.NeededMax, res.Turns, res.Late, res.UnservedAccounts, res.FirstUnservedAt))
	}
	if res.RefreshCalls != res.RotationsSum || res.MinRotations < res.Rotations || res.Unhealthy > 0 || res.Warnings > 0 {
		problems = append(problems, fmt.Sprintf("%d refresh calls for %d rotations, %d to %d each (%d wanted), %d accounts unhealthy, %d warnings",
			res.RefreshCalls, res.RotationsSum, res.MinRotations, res.MaxRotations, res.Rotations, res.Unhealthy, res.Warnings))
	}
	return problems
}

// parseHerdScenarios reads -herd.scenarios.
func parseHerdScenarios(s string) ([]herdScenario, error) {
	var out []herdScenario
	for _, f := range strings.Split(s, ",") {
		parts := strings.Split(strings.TrimSpace(f), ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("-herd.scenarios: %q is not accounts:lifetime[:rotations|:for=duration]", f)
		}
		var sc herdScenario
		var err error
		if _, err = fmt.Sscan(parts[0], &sc.Accounts); err != nil || sc.Accounts < 1 {
			return nil, fmt.Errorf("-herd.scenarios: bad accounts in %q", f)
		}
		if sc.Lifetime, err = time.ParseDuration(parts[1]); err != nil || sc.Lifetime < time.Minute {
			return nil, fmt.Errorf("-herd.scenarios: bad lifetime in %q", f)
		}
		sc.Rotations = 1
		if len(parts) == 3 {
			if d, ok := strings.CutPrefix(parts[2], "for="); ok {
				sc.Rotations = 0
				if sc.For, err = time.ParseDuration(d); err != nil || sc.For <= 0 {
					return nil, fmt.Errorf("-herd.scenarios: bad duration in %q", f)
				}
			} else if _, err = fmt.Sscan(parts[2], &sc.Rotations); err != nil || sc.Rotations < 1 {
				return nil, fmt.Errorf("-herd.scenarios: bad rotations in %q", f)
			}
		}
		out = append(out, sc)
	}
	return out, nil
}

// TestSimulatedHerd runs the simulated herds and checks what they did.
func TestSimulatedHerd(t *testing.T) {
	scenarios := herdScenariosUnit
	if *herdScenarios != "" {
		var err error
		if scenarios, err = parseHerdScenarios(*herdScenarios); err != nil {
			t.Fatal(err)
		}
	} else if testing.Short() || testAccount != "" {
		t.Skip("the simulated herds take seconds, and their accounts are named ones already")
	}
	var results []herdResult
	for _, sc := range scenarios {
		res := runHerd(t, sc)
		t.Logf("%d accounts, %v tokens: setup %.0f s, %d refresh calls for %d rotations (%d-%d each), %d late, %d unserved at a tick, peak %d/s, needed at most %.2f/s of %.1f, warned at %+.0f s, first unserved at %+.0f s; %.1f s here",
			res.Accounts, res.Lifetime, res.SetupSeconds, res.RefreshCalls, res.RotationsSum, res.MinRotations, res.MaxRotations,
			res.Late, res.Unserved, res.PeakPerSecond, res.NeededMax, res.Turns, res.WarnedAt, res.FirstUnservedAt, res.WallSeconds)
		res.Problems = checkHerd(res)
		for _, p := range res.Problems {
			if *herdOut == "" {
				t.Errorf("%d accounts, %v tokens: %s", res.Accounts, res.Lifetime, p)
			} else {
				t.Logf("%d accounts, %v tokens: %s", res.Accounts, res.Lifetime, p) // a finding, reported by make bench-scale
			}
		}
		results = append(results, res)
	}
	if *herdOut == "" {
		return
	}
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(*herdOut, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
