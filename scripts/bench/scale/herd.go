package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"
)

// herdResult is what happened when every mount fell due at once.
type herdResult struct {
	N int `json:"n"`
	// ConfigSeconds is how long pointing every mount at the herd's fake
	// took (one login each); ConfigPeak the most calls the fake got in one
	// second meanwhile; CrossedTick whether a tick fell inside it.
	ConfigSeconds float64 `json:"config_seconds"`
	ConfigPeak    int64   `json:"config_peak_per_s"`
	CrossedTick   bool    `json:"crossed_tick"`
	// Refused counts the config writes answered 429 (their turn did not
	// come within 45 s) and sent again a second later, as the README
	// tells a script to; SlowestConfig is the longest one write took,
	// its tries together, in seconds.
	Refused       int     `json:"refused"`
	SlowestConfig float64 `json:"slowest_config_s"`
	// Seconds is the window watched after that.
	Seconds float64 `json:"seconds"`
	// What the fake saw in the window.
	RefreshCalls int64 `json:"refresh_calls"`
	Refreshes    int64 `json:"refreshes"`
	Reused       int64 `json:"reused"`
	Rejected     int64 `json:"rejected"`
	Late         int64 `json:"late"`
	Logins       int64 `json:"logins"`
	// PeakPerSecond is the most login and refresh calls in one second;
	// SecondsOver the seconds with more than MaxPerSecond.
	PeakPerSecond int64 `json:"peak_per_s"`
	SecondsOver   int   `json:"seconds_over"`
	MaxPerSecond  int64 `json:"max_per_s"`
	// Rotations is the sum over mounts of their refresh_count's growth;
	// MinRotations and MaxRotations its least and most for one mount;
	// Unhealthy counts mounts not healthy at the end.
	Rotations    int64 `json:"rotations"`
	MinRotations int64 `json:"min_rotations"`
	MaxRotations int64 `json:"max_rotations"`
	Unhealthy    int   `json:"unhealthy"`
	// Want is the rotations every mount was to make.
	Want int64 `json:"want"`
	// NeededMax is the most calls a second the plugin process said its
	// accounts need (status: calls_per_second_needed), and Budget what its
	// turns give, read with the rotations.
	NeededMax float64 `json:"needed_max"`
	Budget    float64 `json:"budget"`
	// Events are the bursts of refresh calls, one per tick.
	Events []herdEvent `json:"events"`
	// Plugin is the plugin process at the end; PeakFDs and PeakRSS the most
	// open files and RSS (KiB) it had from the configuration on.
	Plugin  proc  `json:"plugin"`
	PeakFDs int   `json:"peak_fds"`
	PeakRSS int64 `json:"peak_rss_kib"`
}

// herdEvent is one burst of refresh calls.
type herdEvent struct {
	At     float64 `json:"at_s"`
	Calls  int     `json:"calls"`
	SpanMs float64 `json:"span_ms"`
}

// maxConfigTries is how often the herd sends one config write answered 429.
const maxConfigTries = 10

// herd points mounts 1..n at the herd's fake at once, so that all of them
// are configured together (as fast as the pacer lets them log in) with
// tokens of the same lifetime and fall due together. It watches until every mount has rotated
// -rotations times, or every token would have expired that many times over.
// With -accounts-mount, the herd is the named accounts 1..n of that one
// mount, created on the herd's fake the same way.
//
// The fake's token lifetime is about the shortest with which 1,000 mounts
// can be served at 10 calls a second for good: with 8m the margin is half of
// it, and a tick replaces a token a tick and up to half the margin (its
// spread) before that, so a mount rotates every 1 to 3 minutes, 8.3 calls a
// second for 1,000 on average; with 4m it would be every 0 to 1 minute.
func herd(args []string) error {
	fs := flag.NewFlagSet("herd", flag.ContinueOnError)
	addr := fs.String("addr", "", "Vault address")
	token := fs.String("token", "", "Vault token")
	prefix := fs.String("prefix", "m", "mount path prefix")
	n := fs.Int("n", 0, "engine mounts")
	fake := fs.String("fake", "", "the herd's fake Teletracker's URL")
	tickZeroFlag := fs.String("tick-zero", "", "when Vault's rollback manager started, as its log shows it")
	conc := fs.Int("conc", 8, "mounts configured at a time")
	rotations := fs.Int64("rotations", 1, "rotations to watch every mount make")
	lifetime := fs.Duration("lifetime", 8*time.Minute, "the herd's fake's token lifetime")
	maxPerSecond := fs.Int64("max-per-second", 10, "the target: calls per second at most")
	pluginPID := fs.Int("plugin-pid", 0, "the engine's plugin process serving the mounts")
	accounts := fs.String("accounts-mount", "", "the herd is this mount's named accounts, -prefix their names' start")
	out := fs.String("out", "", "write the result here as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tg := herdTargets{prefix: *prefix, mount: *accounts}
	tickZero, err := parseTickZero(*tickZeroFlag)
	if err != nil {
		return err
	}
	if *n < 1 || *conc < 1 || *rotations < 1 || *rotations > 5 {
		return errors.New("need n and conc at least 1, rotations 1-5")
	}
	v := newVault(*addr, *token)
	// The config writes' logins are paced too: n of them at maxPerSecond.
	configTime := time.Duration(*n) * time.Second / time.Duration(max(*maxPerSecond, 1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*rotations)*(*lifetime)+4*tickPeriod+configTime)
	defer cancel()
	res := herdResult{N: *n, Want: *rotations, MaxPerSecond: *maxPerSecond}

	stopPeaks := watchPeaks(*pluginPID, &res)
	start := time.Now()
	var mu sync.Mutex
	err = forMounts(1, *n, *conc, func(i int) error {
		t0 := time.Now()
		for try := 1; ; try++ {
			err := v.call(ctx, http.MethodPost, tg.config(i), tg.body(*fake), nil)
			var se *statusError
			if !errors.As(err, &se) || se.status != http.StatusTooManyRequests || try == maxConfigTries {
				mu.Lock()
				res.SlowestConfig = max(res.SlowestConfig, time.Since(t0).Seconds())
				mu.Unlock()
				return err
			}
			mu.Lock()
			res.Refused++
			mu.Unlock()
			time.Sleep(time.Second)
		}
	})
	if err != nil {
		return err
	}
	end := time.Now()
	res.ConfigSeconds = end.Sub(start).Seconds()
	res.CrossedTick = nextTick(tickZero, start).Before(end)
	before, err := refreshCounts(ctx, v, tg, *n, *conc)
	if err != nil {
		return err
	}
	stats0, err := getFakeStats(ctx, *fake)
	if err != nil {
		return err
	}
	for _, s := range stats0.AuthCallsPerSecond {
		res.ConfigPeak = max(res.ConfigPeak, s.Calls)
	}

	// Wait for the calls, then until every mount has rotated (some may
	// rotate again meanwhile: each call must still be a rotation).
	deadline := time.Now().Add(time.Duration(*rotations)*(*lifetime) + 20*time.Second)
	stats1 := stats0
	for stats1.RefreshCalls-stats0.RefreshCalls < *rotations*int64(*n) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Second)
		if stats1, err = getFakeStats(ctx, *fake); err != nil {
			return err
		}
	}
	for time.Now().Before(deadline) {
		counts, err := refreshCounts(ctx, v, tg, *n, *conc)
		if err != nil {
			return err
		}
		res.note(counts)
		done := true
		for i := range counts {
			done = done && counts[i].count-before[i].count >= *rotations
		}
		if done {
			break
		}
		time.Sleep(5 * time.Second)
	}
	res.Seconds = time.Since(end).Seconds()
	stopPeaks()
	if _, err := readProc(*pluginPID, &res.Plugin); err != nil {
		return err
	}
	stats1, after1, err := quietCounts(ctx, v, *fake, tg, *n, *conc)
	if err != nil {
		return err
	}
	res.note(after1)

	res.RefreshCalls = stats1.RefreshCalls - stats0.RefreshCalls
	res.Refreshes = stats1.Refreshes - stats0.Refreshes
	res.Reused = stats1.ReusedRefreshTokens - stats0.ReusedRefreshTokens
	res.Rejected = stats1.RejectedRefreshes - stats0.RejectedRefreshes
	res.Late = stats1.LateRefreshes - stats0.LateRefreshes
	res.Logins = stats1.LoginCalls - stats0.LoginCalls
	for _, s := range stats1.AuthCallsPerSecond {
		if !s.Second.After(end) {
			continue
		}
		res.PeakPerSecond = max(res.PeakPerSecond, s.Calls)
		if s.Calls > *maxPerSecond {
			res.SecondsOver++
		}
	}
	res.MinRotations = -1
	for i := range after1 {
		d := after1[i].count - before[i].count
		res.Rotations += d
		if res.MinRotations < 0 || d < res.MinRotations {
			res.MinRotations = d
		}
		res.MaxRotations = max(res.MaxRotations, d)
		if after1[i].state != "healthy" {
			res.Unhealthy++
		}
	}
	res.Events = events(stats1.RefreshCallTimes[len(stats0.RefreshCallTimes):], end)
	fmt.Fprintf(os.Stderr, "scale: herd of %d: %d refresh calls, peak %d/s\n", *n, res.RefreshCalls, res.PeakPerSecond)
	return writeJSON(*out, res)
}

// quietCounts reads the fake's counts and every mount's rotations in a
// quiet moment: mounts go on rotating, so the two agree only when no call
// was in flight before the mounts were read and none came while they were.
func quietCounts(ctx context.Context, v *vault, fake string, tg herdTargets, n, conc int) (fakeStats, []mountStatus, error) {
	for {
		a, err := getFakeStats(ctx, fake)
		if err != nil {
			return a, nil, err
		}
		if k := len(a.RefreshCallTimes); k > 0 && time.Since(a.RefreshCallTimes[k-1]) < 2*time.Second {
			if err := sleepCtx(ctx, time.Second); err != nil {
				return a, nil, err
			}
			continue
		}
		counts, err := refreshCounts(ctx, v, tg, n, conc)
		if err != nil {
			return a, nil, err
		}
		b, err := getFakeStats(ctx, fake)
		if err != nil || b.RefreshCalls == a.RefreshCalls && b.LoginCalls == a.LoginCalls {
			return b, counts, err
		}
	}
}

// sleepCtx sleeps for d, or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("no quiet moment to count the rotations in: %w", ctx.Err())
	}
}

// watchPeaks samples the process's open files and RSS twice a second into
// res's peaks until the function it returns is called.
func watchPeaks(pid int, res *herdResult) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			var p proc
			if _, err := readProc(pid, &p); err == nil {
				res.PeakFDs = max(res.PeakFDs, p.FDs)
				res.PeakRSS = max(res.PeakRSS, p.RSS)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// events groups call times into bursts separated by more than 5 s.
func events(times []time.Time, since time.Time) []herdEvent {
	var out []herdEvent
	var first time.Time
	for i, t := range times {
		if i == 0 || t.Sub(times[i-1]) > 5*time.Second {
			out = append(out, herdEvent{At: t.Sub(since).Seconds()})
			first = t
		}
		e := &out[len(out)-1]
		e.Calls++
		e.SpanMs = float64(t.Sub(first)) / float64(time.Millisecond)
	}
	return out
}

// herdTargets names the herd's sessions: mounts, or one mount's accounts.
type herdTargets struct {
	// prefix starts the mounts' paths, or the accounts' names.
	prefix string
	// mount is the mount whose accounts the herd is; "" for mounts.
	mount string
}

// config is the path the i-th session is configured at.
func (tg herdTargets) config(i int) string {
	if tg.mount != "" {
		return tg.mount + "/accounts/" + accountName(tg.prefix, i)
	}
	return mountPath(tg.prefix, i) + "/config"
}

// status is the i-th session's status path.
func (tg herdTargets) status(i int) string {
	if tg.mount != "" {
		return tg.mount + "/status/" + accountName(tg.prefix, i)
	}
	return mountPath(tg.prefix, i) + "/status"
}

// body is the config write that points a session at the fake: a new
// account needs its username too.
func (tg herdTargets) body(fake string) map[string]any {
	b := map[string]any{"base_url": fake, "password": "demo-password"}
	if tg.mount != "" {
		b["username"] = "demo"
	}
	return b
}

// mountStatus is the part of a mount's (or account's) status used here.
type mountStatus struct {
	count          int64
	state          string
	needed, budget float64
}

// note keeps the most calls a second the statuses said were needed.
func (res *herdResult) note(counts []mountStatus) {
	for _, c := range counts {
		res.NeededMax = max(res.NeededMax, c.needed)
		res.Budget = max(res.Budget, c.budget)
	}
}

// refreshCounts reads every mount's (or account's) status.
func refreshCounts(ctx context.Context, v *vault, tg herdTargets, n, conc int) ([]mountStatus, error) {
	out := make([]mountStatus, n)
	err := forMounts(1, n, conc, func(i int) error {
		var st struct {
			State        string      `json:"state"`
			RefreshCount json.Number `json:"refresh_count"`
			Needed       float64     `json:"calls_per_second_needed"`
			Budget       float64     `json:"calls_per_second_budget"`
		}
		if err := v.call(ctx, http.MethodGet, tg.status(i), nil, &st); err != nil {
			return err
		}
		c, err := st.RefreshCount.Int64()
		out[i-1] = mountStatus{count: c, state: st.State, needed: st.Needed, budget: st.Budget}
		return err
	})
	return out, err
}

// forMounts runs f for mounts from..to, conc at a time, and returns the
// first error; after one, no more are started.
func forMounts(from, to, conc int, f func(i int) error) error {
	next := make(chan int)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := from; i <= to; i++ {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	return err
}
