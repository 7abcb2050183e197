// Command load is the benchmark's load generator (see scripts/bench/run.sh).
//
//	load throughput  interleaved rounds of reads against several Vault paths
//	                 at several concurrencies; prints markdown tables
//	load rotation    many concurrent readers of one or more engine mounts
//	                 until each has rotated N times; counts Teletracker's
//	                 /auth/refresh calls per rotation from the fake's stats
//
// Every client is a keep-alive http.Client with an idle connection per
// worker; a worker reuses its request and its body buffer, so the generator
// allocates little beyond what net/http itself does per request.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/teletracker/vault-plugin-secrets-teletracker/scripts/bench/internal/bench"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: load throughput|rotation [flags]")
		os.Exit(2)
	}
	// The generator shares the machine with Vault: collect less often.
	debug.SetGCPercent(400)
	var err error
	switch os.Args[1] {
	case "throughput":
		err = throughput(os.Args[2:])
	case "rotation":
		err = rotation(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// vault is what every command needs to talk to Vault.
type vault struct {
	addr, token string
	client      *http.Client
}

func newVault(addr, token string, conns int) *vault {
	tr := &http.Transport{
		MaxIdleConns:        conns + 16,
		MaxIdleConnsPerHost: conns + 16,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
		// Bounds every request without the timer per request that
		// http.Client.Timeout costs.
		ResponseHeaderTimeout: 100 * time.Second,
	}
	return &vault{addr: strings.TrimSuffix(addr, "/"), token: token, client: &http.Client{Transport: tr}}
}

// request is a GET of Vault's /v1/path with the token, to be reused.
func (v *vault) request(path string) *http.Request {
	return v.get(v.addr + "/v1/" + path)
}

// get is a GET of url, with the token when there is one.
func (v *vault) get(url string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		panic(err) // the address comes from run.sh
	}
	if v.token != "" {
		req.Header.Set("X-Vault-Token", v.token)
	}
	return req
}

// do sends req and reads the whole body into buf (grown when too small),
// so the connection goes back to the pool. It returns the status and body.
func (v *vault) do(req *http.Request, buf *[]byte) (int, []byte, error) {
	resp, err := v.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	b := (*buf)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := resp.Body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			resp.Body.Close()
			return 0, nil, err
		}
	}
	resp.Body.Close()
	*buf = b
	return resp.StatusCode, b, nil
}

// getJSON reads path's response data into out.
func (v *vault) getJSON(path string, out any) error {
	var buf []byte
	code, body, err := v.do(v.request(path), &buf)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, code, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, &struct {
		Data any `json:"data"`
	}{out})
}

// ---- throughput ----------------------------------------------------------

// target is one path read in the throughput rounds.
type target struct {
	name, path string
	// pid is the plugin process that serves path, 0 for none (a builtin).
	pid int
}

// sample is one target's result in one round.
type sample struct {
	reads    int     // reads completed
	rate     float64 // reads per second
	p50, p99 time.Duration
	// CPU time per read of this process (the client), of Vault and of the
	// target's plugin process.
	client, vault, plugin time.Duration
}

func throughput(args []string) error {
	fs := flag.NewFlagSet("throughput", flag.ContinueOnError)
	addr := fs.String("addr", "", "Vault address")
	token := fs.String("token", "", "Vault token")
	targetsFlag := fs.String("targets", "", "name=path[=plugin pid],... the first is measured against the second, and the others")
	vaultPID := fs.Int("vault-pid", 0, "Vault's pid, for its CPU time per read")
	summary := fs.String("summary", "", "append the target's row of the summary table to this file")
	ratioFile := fs.String("ratio-json", "", "write the first target's reads/s against the second's, per concurrency, as JSON to this file")
	concFlag := fs.String("conc", "4,16,64", "concurrent clients, comma-separated")
	rounds := fs.Int("rounds", 6, "interleaved rounds per concurrency")
	dur := fs.Duration("dur", 2*time.Second, "length of one target's run in a round")
	warmup := fs.Duration("warmup", time.Second, "unmeasured reads of each target before a concurrency's rounds")
	bar := fs.Float64("bar", 0.97, "target ratio of the first target's reads/s to the second's")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var targets []target
	var err error
	for _, t := range strings.Split(*targetsFlag, ",") {
		parts := strings.Split(t, "=")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return fmt.Errorf("bad target %q", t)
		}
		tg := target{name: parts[0], path: parts[1]}
		if len(parts) == 3 {
			if tg.pid, err = strconv.Atoi(parts[2]); err != nil {
				return fmt.Errorf("bad pid in %q", t)
			}
		}
		targets = append(targets, tg)
	}
	if len(targets) < 2 {
		return errors.New("need at least two targets")
	}
	concs, err := ints(*concFlag)
	if err != nil {
		return err
	}
	if *rounds < 1 || *rounds > 50 || *dur <= 0 || *dur > time.Minute {
		return errors.New("rounds must be 1-50 and dur up to 1m")
	}
	v := newVault(*addr, *token, slices.Max(concs))

	// Each target must answer 200 with the same seven fields.
	sizes := make([]int, len(targets))
	for i, t := range targets {
		var buf []byte
		code, body, err := v.do(v.request(t.path), &buf)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %v %s", t.path, code, err, body)
		}
		var r struct {
			Data map[string]json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return fmt.Errorf("GET %s: %w", t.path, err)
		}
		for _, f := range []string{"token", "token_type", "expires_at", "ttl", "rotation_period", "last_vault_rotation", "next_vault_rotation"} {
			if r.Data[f] == nil {
				return fmt.Errorf("GET %s: no field %q in %s", t.path, f, body)
			}
		}
		sizes[i] = len(body)
	}

	// Whatever else runs on the machine meanwhile is measured, not assumed.
	ours := func() time.Duration {
		d := selfCPU() + bench.ProcCPU(*vaultPID)
		for _, t := range targets {
			d += bench.ProcCPU(t.pid)
		}
		return d
	}
	var mem0, mem1 runtime.MemStats
	runtime.ReadMemStats(&mem0)
	busy0, ours0, wall0 := bench.MachineBusy(), ours(), time.Now()
	reads := 0

	// results[c][t] are the samples of target t at concurrency c.
	results := make([][][]sample, len(concs))
	lat := make([][]time.Duration, slices.Max(concs))
	for ci, c := range concs {
		results[ci] = make([][]sample, len(targets))
		for _, t := range targets {
			s, err := run(v, t, 0, c, *warmup, lat)
			if err != nil {
				return err
			}
			reads += s.reads
		}
		for r := 0; r < *rounds; r++ {
			// Rotate the order each round so that no target always
			// runs first or last.
			for k := range targets {
				ti := (r + k) % len(targets)
				s, err := run(v, targets[ti], *vaultPID, c, *dur, lat)
				if err != nil {
					return err
				}
				results[ci][ti] = append(results[ci][ti], s)
				reads += s.reads
			}
		}
		fmt.Fprintf(os.Stderr, "load: %d clients done\n", c)
	}
	wall := time.Since(wall0)
	others := (bench.MachineBusy() - busy0) - (ours() - ours0)
	runtime.ReadMemStats(&mem1)
	report(os.Stdout, targets, concs, results, sizes, *rounds, *dur, *bar)
	fmt.Printf("\nMeanwhile other processes on the machine used %.0f%% of its %d CPUs (from /proc/stat, less what the load generator, Vault and the plugins used).\n",
		max(0, 100*others.Seconds()/wall.Seconds()/float64(runtime.NumCPU())), runtime.NumCPU())
	if reads > 0 {
		fmt.Printf("The load generator allocated %.1f times (%.0f bytes) per read, net/http's included.\n",
			float64(mem1.Mallocs-mem0.Mallocs)/float64(reads), float64(mem1.TotalAlloc-mem0.TotalAlloc)/float64(reads))
	}
	if *ratioFile != "" {
		if err := writeRatios(*ratioFile, concs, results); err != nil {
			return err
		}
	}
	if *summary != "" {
		return appendSummary(*summary, targets, concs, results, *bar)
	}
	return nil
}

// writeRatios writes the ratio of target 0 to target 1 at every concurrency.
func writeRatios(file string, concs []int, results [][][]sample) error {
	out := make([]bench.Ratio, len(concs))
	rate := func(s sample) float64 { return s.rate }
	vaultUs := func(s sample) float64 { return float64(s.vault) / float64(time.Microsecond) }
	pluginUs := func(s sample) float64 { return float64(s.plugin) / float64(time.Microsecond) }
	for ci, c := range concs {
		q1, m, q3 := quartiles(ratios(results, ci, 1))
		first, second := results[ci][0], results[ci][1]
		out[ci] = bench.Ratio{Clients: c, First: median(first, rate), Second: median(second, rate), Ratio: m, Q1: q1, Q3: q3,
			FirstVaultUs: median(first, vaultUs), SecondVaultUs: median(second, vaultUs),
			FirstPluginUs: median(first, pluginUs), SecondPluginUs: median(second, pluginUs)}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	return os.WriteFile(file, b, 0o644)
}

// run reads t with c workers for d and returns the rate, the latencies and
// the CPU time per read. lat holds a reusable latency slice per worker.
func run(v *vault, t target, vaultPID, c int, d time.Duration, lat [][]time.Duration) (sample, error) {
	path := t.path
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	cpu0 := [3]time.Duration{selfCPU(), bench.ProcCPU(vaultPID), bench.ProcCPU(t.pid)}
	start := time.Now()
	end := start.Add(d)
	for w := 0; w < c; w++ {
		lat[w] = lat[w][:0]
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			req := v.request(path)
			buf := make([]byte, 0, 4096)
			l := lat[w]
			for t0 := time.Now(); t0.Before(end); {
				code, body, err := v.do(req, &buf)
				t1 := time.Now()
				if err != nil || code != http.StatusOK {
					if failed.Add(1) == 1 {
						firstErr.Store(fmt.Sprintf("GET %s: %d %v %s", path, code, err, bytes.TrimSpace(body)))
					}
				}
				l = append(l, t1.Sub(t0))
				t0 = t1
			}
			lat[w] = l
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1 := [3]time.Duration{selfCPU(), bench.ProcCPU(vaultPID), bench.ProcCPU(t.pid)}
	if n := failed.Load(); n > 0 {
		return sample{}, fmt.Errorf("%d failed reads, the first: %v", n, firstErr.Load())
	}
	var all []time.Duration
	for w := 0; w < c; w++ {
		all = append(all, lat[w]...)
	}
	if len(all) == 0 {
		return sample{}, fmt.Errorf("no reads of %s completed", path)
	}
	slices.Sort(all)
	n := time.Duration(len(all))
	return sample{
		reads:  len(all),
		rate:   float64(len(all)) / elapsed.Seconds(),
		p50:    all[len(all)*50/100],
		p99:    all[min(len(all)*99/100, len(all)-1)],
		client: (cpu1[0] - cpu0[0]) / n,
		vault:  (cpu1[1] - cpu0[1]) / n,
		plugin: (cpu1[2] - cpu0[2]) / n,
	}, nil
}

// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// report prints the per-target table and the ratio table.
func report(w io.Writer, targets []target, concs []int, results [][][]sample, sizes []int, rounds int, dur time.Duration, bar float64) {
	fmt.Fprintf(w, "Medians of %d interleaved rounds of %s per target and concurrency (order rotated each round).\n\n", rounds, dur)
	fmt.Fprintln(w, "| clients | read | path | body bytes | reads/s | p50 ms | p99 ms | CPU µs/read: load generator | Vault | plugin |")
	fmt.Fprintln(w, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
	for ci, c := range concs {
		for ti, t := range targets {
			ss := results[ci][ti]
			plugin := "builtin"
			if t.pid != 0 {
				plugin = fmt.Sprintf("%.0f", median(ss, func(s sample) float64 { return us(s.plugin) }))
			}
			fmt.Fprintf(w, "| %d | %s | `%s` | %d | %.0f | %.2f | %.2f | %.0f | %.0f | %s |\n", c, t.name, t.path, sizes[ti],
				median(ss, func(s sample) float64 { return s.rate }),
				median(ss, func(s sample) float64 { return ms(s.p50) }),
				median(ss, func(s sample) float64 { return ms(s.p99) }),
				median(ss, func(s sample) float64 { return us(s.client) }),
				median(ss, func(s sample) float64 { return us(s.vault) }),
				plugin)
		}
	}
	first := targets[0].name
	fmt.Fprintf(w, "\nRatios: the median over rounds of each round's ratio (the runs of a round are seconds apart), "+
		"with the interquartile range of the per-round ratios. reads/s: higher is better for %s; latency: lower is better for %s. "+
		"Target: %s/%s reads/s at least %.2f.\n\n", first, first, first, targets[1].name, bar)
	fmt.Fprintln(w, "| clients | ratio | reads/s (IQR over rounds) | p50 latency | p99 latency | target |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---|")
	for ci, c := range concs {
		for ti := 1; ti < len(targets); ti++ {
			a, b := results[ci][0], results[ci][ti]
			rate := ratios(results, ci, ti)
			p50 := make([]float64, len(a))
			p99 := make([]float64, len(a))
			for r := range a {
				p50[r] = float64(a[r].p50) / float64(b[r].p50)
				p99[r] = float64(a[r].p99) / float64(b[r].p99)
			}
			q1, m, q3 := quartiles(rate)
			verdict := "context only"
			if ti == 1 {
				verdict = verdictFor(m, q3, bar)
			}
			fmt.Fprintf(w, "| %d | %s/%s | %.3f (%.3f–%.3f) | %.3f | %.3f | %s |\n", c, first, targets[ti].name,
				m, q1, q3, medianOf(p50), medianOf(p99), verdict)
		}
	}
}

// verdictFor is the throughput target's verdict for a median ratio m whose
// upper quartile over rounds is q3.
func verdictFor(m, q3, bar float64) string {
	switch {
	case m >= bar:
		return "met"
	case q3 >= bar:
		return fmt.Sprintf("missed by %.3f, within the spread between rounds", bar-m)
	}
	return fmt.Sprintf("missed by %.3f", bar-m)
}

// quartiles are the lower quartile, median and upper quartile of xs.
func quartiles(xs []float64) (q1, m, q3 float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(q float64) float64 {
		pos := q * float64(len(s)-1)
		i := int(pos)
		if i+1 >= len(s) {
			return s[len(s)-1]
		}
		return s[i] + (pos-float64(i))*(s[i+1]-s[i])
	}
	return at(0.25), medianOf(s), at(0.75)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// ratios are the per-round ratios of target 0's reads/s to target ti's at
// concurrency ci.
func ratios(results [][][]sample, ci, ti int) []float64 {
	a, b := results[ci][0], results[ci][ti]
	r := make([]float64, len(a))
	for i := range a {
		r[i] = a[i].rate / b[i].rate
	}
	return r
}

// appendSummary appends the throughput target's row to the summary table.
func appendSummary(file string, targets []target, concs []int, results [][][]sample, bar float64) error {
	var got, missed []string
	for ci, c := range concs {
		q1, m, q3 := quartiles(ratios(results, ci, 1))
		got = append(got, fmt.Sprintf("%.3f (IQR %.3f–%.3f)", m, q1, q3))
		if v := verdictFor(m, q3, bar); v != "met" {
			missed = append(missed, fmt.Sprintf("at %d clients: %s", c, v))
		}
	}
	verdict := "met"
	if len(missed) > 0 {
		verdict = strings.Join(missed, "; ")
	}
	cs := make([]string, len(concs))
	for i, c := range concs {
		cs[i] = strconv.Itoa(c)
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "| %s/%s reads/s, at %s clients | at least %.2f at every concurrency | %s | %s |\n",
		targets[0].name, targets[1].name, strings.Join(cs, ", "), bar, strings.Join(got, ", "), verdict)
	return errors.Join(err, f.Close())
}

func median(ss []sample, f func(sample) float64) float64 {
	xs := make([]float64, len(ss))
	for i, s := range ss {
		xs[i] = f(s)
	}
	return medianOf(xs)
}

func medianOf(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 5000 {
			return nil, fmt.Errorf("bad count %q (1-5000)", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// ---- rotation ------------------------------------------------------------

// fakeStats is the part of the fake Teletracker's GET /_fake/stats used here.
type fakeStats struct {
	LoginCalls          int64       `json:"login_calls"`
	RefreshCalls        int64       `json:"refresh_calls"`
	ReusedRefreshTokens int64       `json:"reused_refresh_tokens"`
	RefreshCallTimes    []time.Time `json:"refresh_call_times"`
}

// engineStatus is the part of the engine's status read used here.
type engineStatus struct {
	State        string      `json:"state"`
	RefreshCount json.Number `json:"refresh_count"`
}

// rotationCase is one mount, its own fake, and how many readers it gets.
type rotationCase struct {
	readers int
	mount   string
	fake    string

	// Results. slowestAt is when the slowest read was sent, after the start.
	rotations, calls, logins, reused int64
	reads, failedReads, slowReads    int64
	tokensSeen                       int
	minGap, maxLatency, slowestAt    time.Duration
	elapsed                          time.Duration
	err                              error
}

func rotation(args []string) error {
	fs := flag.NewFlagSet("rotation", flag.ContinueOnError)
	addr := fs.String("addr", "", "Vault address")
	token := fs.String("token", "", "Vault token")
	casesFlag := fs.String("cases", "", "readers=mount=fakeURL,... run side by side, each mount with its own fake")
	want := fs.Int64("rotations", 5, "rotations to wait for on every mount")
	timeout := fs.Duration("timeout", 150*time.Second, "give up after this long")
	summary := fs.String("summary", "", "append the target's row of the summary table to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var cases []*rotationCase
	total := 0
	for _, c := range strings.Split(*casesFlag, ",") {
		parts := strings.SplitN(c, "=", 3)
		if len(parts) != 3 {
			return fmt.Errorf("bad case %q", c)
		}
		n, err := strconv.Atoi(parts[0])
		if err != nil || n < 1 || n > 5000 {
			return fmt.Errorf("bad reader count in %q", c)
		}
		cases = append(cases, &rotationCase{readers: n, mount: parts[1], fake: strings.TrimSuffix(parts[2], "/")})
		total += n
	}
	v := newVault(*addr, *token, total+len(cases))
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.err = c.run(ctx, v, *want)
		}()
	}
	wg.Wait()

	fmt.Println("| readers | mount | rotations | `/auth/refresh` calls | calls per rotation | calls not followed by a rotation | logins | refresh tokens re-used | tokens seen | least gap between calls | reads | failed reads | reads over 1 s | slowest read (sent at) | target |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	var failed, got, readers, missed []string
	for _, c := range cases {
		readers = append(readers, strconv.Itoa(c.readers))
		if c.err != nil {
			got = append(got, "error")
			missed = append(missed, fmt.Sprintf("%d readers: %v", c.readers, c.err))
			failed = append(failed, fmt.Sprintf("%s: %v", c.mount, c.err))
			fmt.Printf("| %d | `%s` | error: %v ||||||||||||||\n", c.readers, c.mount, c.err)
			continue
		}
		per := "-"
		if c.rotations > 0 {
			per = fmt.Sprintf("%.2f", float64(c.calls)/float64(c.rotations))
		}
		got = append(got, fmt.Sprintf("%d calls / %d rotations", c.calls, c.rotations))
		verdict := "met"
		switch {
		case c.rotations < *want:
			verdict = fmt.Sprintf("not measured: %d of %d rotations in %s", c.rotations, *want, c.elapsed.Round(time.Second))
		case c.calls != c.rotations || c.logins != 0 || c.reused != 0 || c.failedReads != 0:
			verdict = fmt.Sprintf("missed: %d extra calls, %d logins, %d re-used, %d failed reads", c.calls-c.rotations, c.logins, c.reused, c.failedReads)
		}
		if verdict != "met" {
			missed = append(missed, fmt.Sprintf("%d readers: %s", c.readers, verdict))
		}
		fmt.Printf("| %d | `%s` | %d | %d | %s | %d | %d | %d | %d | %.1f s | %d | %d | %d | %.0f ms (+%.1f s) | %s |\n",
			c.readers, c.mount, c.rotations, c.calls, per, c.calls-c.rotations, c.logins, c.reused, c.tokensSeen,
			c.minGap.Seconds(), c.reads, c.failedReads, c.slowReads, ms(c.maxLatency), c.slowestAt.Seconds(), verdict)
	}
	if *summary != "" {
		verdict := "met"
		if len(missed) > 0 {
			verdict = strings.Join(missed, "; ")
		}
		f, err := os.OpenFile(*summary, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(f, "| `/auth/refresh` calls per rotation, %s readers, at least %d rotations each | exactly 1, and none between rotations | %s | %s |\n",
			strings.Join(readers, ", "), *want, strings.Join(got, "; "), verdict)
		if err := errors.Join(err, f.Close()); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// run hammers c.mount's token with c.readers readers until the engine has
// rotated want times (or ctx ends), then compares the engine's count of
// rotations with the fake's count of calls over exactly that window.
func (c *rotationCase) run(ctx context.Context, v *vault, want int64) error {
	fake := &vault{addr: c.fake, client: v.client}
	status0, stats0, err := c.snapshot(v, fake)
	if err != nil {
		return err
	}
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, failed, slow atomic.Int64
	// Each reader's slowest read and when it was sent, merged at the end.
	var mu sync.Mutex
	var slowest, slowestAt time.Duration
	seen := make([]map[string]struct{}, c.readers)
	for r := 0; r < c.readers; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			req := v.request(c.mount + "/token")
			buf := make([]byte, 0, 4096)
			mine := map[string]struct{}{}
			var last []byte
			var n, bad, late int64
			var worst, worstAt time.Duration
			for {
				select {
				case <-stop:
					seen[r] = mine
					reads.Add(n)
					failed.Add(bad)
					slow.Add(late)
					mu.Lock()
					if worst > slowest {
						slowest, slowestAt = worst, worstAt
					}
					mu.Unlock()
					return
				default:
				}
				t0 := time.Now()
				code, body, err := v.do(req, &buf)
				took := time.Since(t0)
				if took > worst {
					worst, worstAt = took, t0.Sub(start)
				}
				if took > time.Second {
					late++
				}
				n++
				if err != nil || code != http.StatusOK {
					bad++
					continue
				}
				// Note each token this reader sees, without decoding.
				if tok := tokenOf(body); !bytes.Equal(tok, last) {
					last = append(last[:0], tok...)
					mine[string(tok)] = struct{}{}
				}
			}
		}(r)
	}

	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	var pollErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-poll.C:
			var st engineStatus
			if pollErr = v.getJSON(c.mount+"/status", &st); pollErr != nil || count(st)-count(status0) >= want {
				break wait
			}
		}
	}
	close(stop)
	wg.Wait()
	if pollErr != nil {
		return pollErr
	}
	c.elapsed = time.Since(start)
	status1, stats1, err := c.snapshot(v, fake)
	if err != nil {
		return err
	}
	c.rotations = count(status1) - count(status0)
	c.calls = stats1.RefreshCalls - stats0.RefreshCalls
	c.logins = stats1.LoginCalls - stats0.LoginCalls
	c.reused = stats1.ReusedRefreshTokens - stats0.ReusedRefreshTokens
	c.reads, c.failedReads, c.slowReads = reads.Load(), failed.Load(), slow.Load()
	c.maxLatency, c.slowestAt = slowest, slowestAt
	all := map[string]struct{}{}
	for _, m := range seen {
		for t := range m {
			all[t] = struct{}{}
		}
	}
	c.tokensSeen = len(all)
	times := stats1.RefreshCallTimes[len(stats0.RefreshCallTimes):]
	for i := 1; i < len(times); i++ {
		if g := times[i].Sub(times[i-1]); c.minGap == 0 || g < c.minGap {
			c.minGap = g
		}
	}
	if status1.State != "healthy" {
		return fmt.Errorf("state %q after the run", status1.State)
	}
	return nil
}

// snapshot reads the engine's status and the fake's stats at one moment: a
// rotation between the two reads (Vault's tick) is caught by reading the
// status again, and the pair is read anew.
func (c *rotationCase) snapshot(v, fake *vault) (engineStatus, fakeStats, error) {
	for try := 0; try < 5; try++ {
		var before, after engineStatus
		var stats fakeStats
		if err := v.getJSON(c.mount+"/status", &before); err != nil {
			return before, stats, err
		}
		var buf []byte
		code, body, err := fake.do(fake.get(fake.addr+"/_fake/stats"), &buf)
		if err != nil || code != http.StatusOK {
			return before, stats, fmt.Errorf("fake stats: %d %v", code, err)
		}
		if err := json.Unmarshal(body, &stats); err != nil {
			return before, stats, fmt.Errorf("fake stats: %w", err)
		}
		if err := v.getJSON(c.mount+"/status", &after); err != nil {
			return before, stats, err
		}
		if count(before) == count(after) {
			return after, stats, nil
		}
	}
	return engineStatus{}, fakeStats{}, errors.New("the session kept rotating while its counters were read")
}

func count(s engineStatus) int64 {
	n, _ := s.RefreshCount.Int64()
	return n
}

// tokenOf finds the token's value in a token read's JSON, which Vault
// writes with sorted keys and no spaces; nil when absent.
func tokenOf(body []byte) []byte {
	const key = `"token":"`
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return nil
	}
	rest := body[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}
