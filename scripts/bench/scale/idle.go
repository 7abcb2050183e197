package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/teletracker/vault-plugin-secrets-teletracker/scripts/bench/internal/bench"
)

// tickPeriod is Vault's rollback period: every minute, one ticker starts the
// rollback (and so the PeriodicFunc) of every mount at once, through a pool
// of 256 workers (vault/rollback.go).
const tickPeriod = time.Minute

// idleResult is what the processes did through one idle window.
type idleResult struct {
	N int `json:"n"`
	// Start is when the window began; Seconds its length.
	Start   time.Time `json:"start"`
	Seconds float64   `json:"seconds"`
	// Ticks are Vault's ticks inside the window, at their offset from Start.
	Ticks []tickWork `json:"ticks"`
	// Mounts counts every mount Vault ticks (secrets and auth, builtin
	// ones included); Rollbacks the rollbacks it ran in the window.
	Mounts    int     `json:"mounts"`
	Rollbacks float64 `json:"rollbacks"`
	// EngineRollbacks and FloorRollbacks are those of the engine's and the
	// floor's mounts, with their summed time (vault.rollback.attempt.<mount>).
	EngineRollbacks  float64 `json:"engine_rollbacks"`
	EngineRollbackMs float64 `json:"engine_rollback_ms"`
	FloorRollbacks   float64 `json:"floor_rollbacks"`
	FloorRollbackMs  float64 `json:"floor_rollback_ms"`
	// Storage counts barrier operations (vault.barrier.*) in the window.
	Storage map[string]float64 `json:"storage"`
	// UpstreamCalls counts login and refresh calls the fake received.
	UpstreamCalls int64 `json:"upstream_calls"`
	// Plugin is the engine's process serving the N mounts, Solo the one
	// serving the single reference mount, Floor the minimal plugin's
	// process serving N mounts of its own, Vault the server.
	Plugin proc `json:"plugin"`
	Solo   proc `json:"solo"`
	Floor  proc `json:"floor"`
	Vault  proc `json:"vault"`
	// Load is the 1-minute load average at the start and end; Others the
	// share of the machine's CPUs that processes other than these used.
	Load   [2]float64 `json:"load"`
	Others float64    `json:"others_pct"`
	// Runtime is what the plugin's Go runtime says, when it runs with the
	// profiler (built with the pprof tag).
	Runtime *goRuntime `json:"runtime,omitempty"`
}

// goRuntime is the plugin's Go runtime at the end of the window, and its
// collections in it.
type goRuntime struct {
	// Allocated is the bytes allocated in the window (TotalAlloc).
	Allocated  int64 `json:"allocated"`
	HeapAlloc  int64 `json:"heap_alloc"`
	HeapInuse  int64 `json:"heap_inuse"`
	StackInuse int64 `json:"stack_inuse"`
	Goroutines int64 `json:"goroutines"`
	GCs        int64 `json:"gcs"`
	ForcedGCs  int64 `json:"forced_gcs"`
}

// tickWork is the CPU one tick cost: from the tick until the plugin's last
// CPU use before a quiet second.
type tickWork struct {
	At       float64 `json:"at_s"`
	SpanMs   float64 `json:"span_ms"`
	PluginMs float64 `json:"plugin_cpu_ms"`
	VaultMs  float64 `json:"vault_cpu_ms"`
}

// proc is one process at the end of the window, and its CPU in it.
type proc struct {
	Pid int `json:"pid"`
	// RSS at the start and end, and the end's anonymous and file-backed
	// parts and peak, in KiB.
	RSSStart int64 `json:"rss_start_kib"`
	RSS      int64 `json:"rss_kib"`
	Anon     int64 `json:"anon_kib"`
	File     int64 `json:"file_kib"`
	HWM      int64 `json:"hwm_kib"`
	Threads  int64 `json:"threads"`
	FDs      int   `json:"fds"`
	// CPU is user+system seconds in the window.
	CPU float64 `json:"cpu_s"`
}

// idle watches the processes for -dur with no requests, from -settle after
// it is called, and longer when its last tick would come less than -tail
// before the end, so that the window holds whole ticks without waiting for
// one (-dur 2m holds two).
func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	addr := fs.String("addr", "", "Vault address")
	token := fs.String("token", "", "Vault token")
	n := fs.Int("n", 0, "engine mounts (or accounts)")
	dur := fs.Duration("dur", 2*tickPeriod, "window length")
	settle := fs.Duration("settle", 5*time.Second, "wait this long before the window, after what ran before")
	tail := fs.Duration("tail", 10*time.Second, "hold at least this much after the window's last tick")
	tickZeroFlag := fs.String("tick-zero", "", "when Vault's rollback manager started, as its log shows it; its ticks follow every minute")
	vaultPID := fs.Int("vault-pid", 0, "Vault's pid")
	pluginPID := fs.Int("plugin-pid", 0, "the engine's plugin process serving the mounts")
	soloPID := fs.Int("solo-pid", 0, "the engine's plugin process serving the one reference mount")
	floorPID := fs.Int("floor-pid", 0, "the minimal plugin's process serving as many mounts (0: none)")
	fake := fs.String("fake", "", "the fake Teletracker's URL")
	every := fs.Duration("every", 50*time.Millisecond, "CPU sampling interval")
	pprof := fs.String("pprof", "", "the plugin's profiler address, when it has one")
	profileDir := fs.String("profile-dir", "", "with -pprof: save the heap profiles at the window's start and end here")
	prefix := fs.String("prefix", "m", "the engine's mount path prefix")
	profilePrefix := fs.String("profile-prefix", "", "starts the names of the heap profiles saved")
	floorPrefix := fs.String("floor-prefix", "f", "the floor's mount path prefix")
	out := fs.String("out", "", "write the result here as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tickZero, err := parseTickZero(*tickZeroFlag)
	if err != nil {
		return err
	}
	if *dur < tickPeriod || *dur > 10*time.Minute || *settle < 0 || *tail <= 0 || *tail >= tickPeriod/2 {
		return errors.New("need dur 1m-10m, settle at least 0 and tail under 30s")
	}
	v := newVault(*addr, *token)
	ctx, cancel := context.WithTimeout(context.Background(), *dur+3*time.Minute)
	defer cancel()
	mounts, err := countMounts(ctx, v)
	if err != nil {
		return err
	}

	time.Sleep(*settle)

	res := idleResult{N: *n, Mounts: mounts, Storage: map[string]float64{}}
	prom0, err := scrape(ctx, v)
	if err != nil {
		return err
	}
	fake0, err := getFakeStats(ctx, *fake)
	if err != nil {
		return err
	}
	pids := []int{*pluginPID, *soloPID, *floorPID, *vaultPID}
	procs := []*proc{&res.Plugin, &res.Solo, &res.Floor, &res.Vault}
	cpu0 := make([]float64, len(pids))
	for i, pid := range pids {
		if pid == 0 {
			continue // none, as the floor beside one mount's accounts
		}
		if cpu0[i], err = readProc(pid, procs[i]); err != nil {
			return err
		}
		procs[i].RSSStart = procs[i].RSS
	}
	var rt0 goRuntime
	if *pprof != "" {
		if rt0, err = readRuntime(ctx, *pprof); err != nil {
			return err
		}
		if err := saveHeap(ctx, *pprof, *profileDir, fmt.Sprintf("%sheap-%d-start.pb.gz", *profilePrefix, *n)); err != nil {
			return err
		}
	}
	res.Load[0] = loadAvg()
	busy0 := bench.MachineBusy().Seconds()

	res.Start = time.Now()
	end := windowEnd(tickZero, res.Start, *dur, *tail)
	samples := sampleCPU(end, *every, *pluginPID, *vaultPID)
	res.Seconds = time.Since(res.Start).Seconds()

	busy1 := bench.MachineBusy().Seconds()
	res.Load[1] = loadAvg()
	ours := 0.0
	for i, pid := range pids {
		if pid == 0 {
			continue
		}
		cpu1, err := readProc(pid, procs[i])
		if err != nil {
			return err
		}
		procs[i].CPU = cpu1 - cpu0[i]
		ours += procs[i].CPU
	}
	res.Others = max(0, 100*((busy1-busy0)-ours)/res.Seconds/float64(runtime.NumCPU()))
	fake1, err := getFakeStats(ctx, *fake)
	if err != nil {
		return err
	}
	if *pprof != "" {
		rt1, err := readRuntime(ctx, *pprof)
		if err != nil {
			return err
		}
		if err := saveHeap(ctx, *pprof, *profileDir, fmt.Sprintf("%sheap-%d-end.pb.gz", *profilePrefix, *n)); err != nil {
			return err
		}
		rt1.GCs -= rt0.GCs
		rt1.ForcedGCs -= rt0.ForcedGCs
		rt1.Allocated -= rt0.Allocated
		res.Runtime = &rt1
	}
	res.UpstreamCalls = fake1.LoginCalls + fake1.RefreshCalls - fake0.LoginCalls - fake0.RefreshCalls
	prom1, err := scrape(ctx, v)
	if err != nil {
		return err
	}
	delta := func(prefix, suffix string) float64 {
		return sumOf(prom1, prefix, suffix) - sumOf(prom0, prefix, suffix)
	}
	res.Rollbacks = delta("vault_rollback_attempt_", "_count")
	res.EngineRollbacks = delta("vault_rollback_attempt_"+*prefix, "_count")
	res.EngineRollbackMs = delta("vault_rollback_attempt_"+*prefix, "_sum")
	res.FloorRollbacks = delta("vault_rollback_attempt_"+*floorPrefix, "_count")
	res.FloorRollbackMs = delta("vault_rollback_attempt_"+*floorPrefix, "_sum")
	for _, op := range []string{"get", "put", "list", "delete"} {
		k := "vault_barrier_" + op + "_count"
		res.Storage[op] = prom1[k] - prom0[k]
	}
	for t := nextTick(tickZero, res.Start); t.Before(end); t = t.Add(tickPeriod) {
		res.Ticks = append(res.Ticks, tickBurst(samples, t, res.Start))
	}
	fmt.Fprintf(os.Stderr, "scale: idle at %d: plugin %.2f s CPU, RSS %d KiB; %d ticks\n",
		*n, res.Plugin.CPU, res.Plugin.RSS, len(res.Ticks))
	return writeJSON(*out, res)
}

// parseTickZero reads the time Vault's rollback manager started, as its log
// line shows it (hclog's format) or in RFC 3339.
func parseTickZero(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02T15:04:05.000Z0700", time.RFC3339Nano} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("-tick-zero: cannot read %q", s)
}

// windowEnd is the end of a window of dur from start: later when the last
// tick before that comes less than tail before it.
func windowEnd(tickZero, start time.Time, dur, tail time.Duration) time.Time {
	end := start.Add(dur)
	last := nextTick(tickZero, end).Add(-tickPeriod)
	if !last.Before(start) && last.Add(tail).After(end) {
		end = last.Add(tail)
	}
	return end
}

// nextTick is the first tick at or after t.
func nextTick(zero, t time.Time) time.Time {
	k := (t.Sub(zero) + tickPeriod - 1) / tickPeriod
	return zero.Add(k * tickPeriod)
}

// cpuSample is the CPU the plugin and Vault had used at one moment.
type cpuSample struct {
	at            time.Time
	plugin, vault float64
}

// sampleCPU reads the two processes' CPU every interval until end.
func sampleCPU(end time.Time, every time.Duration, pluginPID, vaultPID int) []cpuSample {
	var out []cpuSample
	tick := time.NewTicker(every)
	defer tick.Stop()
	for now := time.Now(); now.Before(end); now = <-tick.C {
		out = append(out, cpuSample{at: now, plugin: bench.ProcCPU(pluginPID).Seconds(), vault: bench.ProcCPU(vaultPID).Seconds()})
	}
	return out
}

// tickBurst is the work of the tick at t: from t until the last sample in
// which the plugin used CPU, before a second without any (or 50 s).
func tickBurst(samples []cpuSample, t, start time.Time) tickWork {
	w := tickWork{At: t.Sub(start).Seconds()}
	first, last := -1, -1
	for i := 1; i < len(samples); i++ {
		s := samples[i]
		if s.at.Before(t) {
			continue
		}
		if first < 0 {
			first = i - 1
		}
		if s.at.Sub(t) > 50*time.Second || (last >= 0 && s.at.Sub(samples[last].at) > time.Second) ||
			(last < 0 && s.at.Sub(t) > time.Second) {
			break
		}
		if s.plugin > samples[i-1].plugin {
			last = i
		}
	}
	if first < 0 || last < 0 {
		return w
	}
	w.SpanMs = float64(samples[last].at.Sub(t)) / float64(time.Millisecond)
	w.PluginMs = 1000 * (samples[last].plugin - samples[first].plugin)
	w.VaultMs = 1000 * (samples[last].vault - samples[first].vault)
	return w
}

// sumOf sums the series whose names start with prefix and end with suffix.
func sumOf(m map[string]float64, prefix, suffix string) float64 {
	sum := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, prefix) && strings.HasSuffix(k, suffix) {
			sum += v
		}
	}
	return sum
}

// saveHeap saves the profiler's heap profile to dir/name; nothing when dir
// is empty. With the window's start and end,
// go tool pprof -sample_index=alloc_space -diff_base start end
// shows what the ticks allocated.
func saveHeap(ctx context.Context, addr, dir, name string) error {
	if dir == "" {
		return nil
	}
	// gc=1: a profile counts allocations only up to the last collection.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	return errors.Join(err, f.Close())
}

// readRuntime reads the memory statistics at the end of the profiler's heap
// profile in text form, and the number of goroutines.
func readRuntime(ctx context.Context, addr string) (goRuntime, error) {
	var rt goRuntime
	for _, path := range []string{"heap?debug=1", "goroutine?debug=1"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/"+path, nil)
		if err != nil {
			return rt, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return rt, err
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var dst *int64
			k, val, _ := strings.Cut(strings.TrimPrefix(sc.Text(), "# "), " = ")
			switch k {
			case "TotalAlloc":
				dst = &rt.Allocated
			case "HeapAlloc":
				dst = &rt.HeapAlloc
			case "HeapInuse":
				dst = &rt.HeapInuse
			case "Stack":
				dst = &rt.StackInuse
				val, _, _ = strings.Cut(val, " ")
			case "NumGC":
				dst = &rt.GCs
			case "NumForcedGC":
				dst = &rt.ForcedGCs
			}
			if total, ok := strings.CutPrefix(sc.Text(), "goroutine profile: total "); ok {
				dst, val = &rt.Goroutines, total
			}
			if dst != nil {
				*dst, _ = strconv.ParseInt(val, 10, 64)
			}
		}
		err = sc.Err()
		resp.Body.Close()
		if err != nil {
			return rt, err
		}
	}
	return rt, nil
}

// countMounts counts the secrets and auth mounts Vault ticks.
func countMounts(ctx context.Context, v *vault) (int, error) {
	total := 0
	for _, path := range []string{"sys/mounts", "sys/auth"} {
		var m map[string]any
		if err := v.call(ctx, http.MethodGet, path, nil, &m); err != nil {
			return 0, err
		}
		total += len(m)
	}
	return total, nil
}

// scrape reads Vault's metrics in Prometheus' text format and sums each
// series over its labels.
func scrape(ctx context.Context, v *vault) (map[string]float64, error) {
	raw, err := v.do(ctx, http.MethodGet, "sys/metrics?format=prometheus", nil)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		if f, err := strconv.ParseFloat(line[sp+1:], 64); err == nil {
			m[name] += f
		}
	}
	return m, sc.Err()
}

// readProc fills p from /proc/<pid>/status and fd, and returns the CPU
// seconds the process has used.
func readProc(pid int, p *proc) (float64, error) {
	p.Pid = pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		x, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			p.RSS = x
		case "RssAnon":
			p.Anon = x
		case "RssFile":
			p.File = x
		case "VmHWM":
			p.HWM = x
		case "Threads":
			p.Threads = x
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	p.FDs = len(fds)
	return bench.ProcCPU(pid).Seconds(), nil
}

// loadAvg is the 1-minute load average.
func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	x, _ := strconv.ParseFloat(f[0], 64)
	return x
}
