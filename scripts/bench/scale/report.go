package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/teletracker/vault-plugin-secrets-teletracker/scripts/bench/internal/bench"
)

// The targets of issue 11.
const (
	maxSlopeKiB   = 50   // marginal plugin memory per mount
	maxIdleCPUPct = 2.0  // plugin CPU at the most mounts, % of one core
	minReadRatio  = 0.95 // token reads/s with the most mounts against one
)

// step is everything measured at one N.
type step struct {
	n     int
	setup setupResult
	idle  idleResult
	// reads is load throughput's -ratio-json: the reads/s of a mount in
	// the process serving N mounts against the solo process's.
	reads []bench.Ratio
}

// report prints the Scale section's tables from the results in -dir.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	dir := fs.String("dir", "", "the directory the steps wrote their results to")
	ns := fs.String("n", "1,10,100,1000", "the mount (or account) counts measured")
	accounts := fs.Bool("accounts", false, "the Accounts in one mount section's tables instead")
	raised := fs.Float64("raised", 0, "with -accounts: the -calls-per-second the accounts were set up with")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *accounts {
		counts, err := accountCounts(*ns)
		if err != nil {
			return err
		}
		return reportAccounts(os.Stdout, *dir, counts, *raised)
	}
	var steps []step
	for _, f := range strings.Split(*ns, ",") {
		s := step{}
		if _, err := fmt.Sscan(f, &s.n); err != nil {
			return fmt.Errorf("bad -n %q", f)
		}
		for name, v := range map[string]any{"setup": &s.setup, "idle": &s.idle, "reads": &s.reads} {
			if err := readJSON(filepath.Join(*dir, fmt.Sprintf("%s-%d.json", name, s.n)), v); err != nil {
				return err
			}
		}
		steps = append(steps, s)
	}
	if len(steps) < 2 {
		return errors.New("need at least two mount counts")
	}
	var h herdResult
	if err := readJSON(filepath.Join(*dir, "herd.json"), &h); err != nil {
		return err
	}
	w := os.Stdout
	targets(w, steps, h)
	resources(w, steps)
	ticks(w, steps)
	herdTable(w, h, "mounts")
	return nil
}

func readJSON(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// slope is the least-squares slope of y over x.
func slope(x, y []float64) float64 {
	var mx, my float64
	for i := range x {
		mx += x[i]
		my += y[i]
	}
	mx /= float64(len(x))
	my /= float64(len(y))
	var num, den float64
	for i := range x {
		num += (x[i] - mx) * (y[i] - my)
		den += (x[i] - mx) * (x[i] - mx)
	}
	return num / den
}

// slopeOf is the slope over the steps' N of f.
func slopeOf(steps []step, f func(step) float64) float64 {
	x := make([]float64, len(steps))
	y := make([]float64, len(steps))
	for i, s := range steps {
		x[i], y[i] = float64(s.n), f(s)
	}
	return slope(x, y)
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// cpuPct is a process's CPU in the window as % of one core.
func cpuPct(p proc, secs float64) float64 { return 100 * p.CPU / secs }

// storageOps is the barrier operations in the window.
func storageOps(r idleResult) float64 {
	return r.Storage["get"] + r.Storage["put"] + r.Storage["list"] + r.Storage["delete"]
}

// perTick divides x by the ticks in the window (at least one).
func perTick(r idleResult, x float64) float64 { return x / float64(max(len(r.Ticks), 1)) }

// readsMissedBy says by how much the reads of a mount among many fell short
// of one mount's alone, and in which process the CPU per read differs.
func readsMissedBy(r bench.Ratio) string {
	return fmt.Sprintf("by %.3f; CPU per read of the engine's plugin %.0f µs against solo's %.0f, of Vault %.0f µs against %.0f",
		minReadRatio-r.Ratio, r.FirstPluginUs, r.SecondPluginUs, r.FirstVaultUs, r.SecondVaultUs)
}

// verdict is "met", or "missed" with what by.
func verdict(met bool, by string) string {
	if met {
		return "met"
	}
	return "missed: " + by
}

func targets(w io.Writer, steps []step, h herdResult) {
	last := steps[len(steps)-1]
	memSlope := slopeOf(steps, func(s step) float64 { return float64(s.idle.Plugin.RSS) })
	floorSlope := slopeOf(steps, func(s step) float64 { return float64(s.idle.Floor.RSS) })
	netOfFloor := "over it too"
	if memSlope-floorSlope <= maxSlopeKiB {
		netOfFloor = "within it"
	}
	cpu := cpuPct(last.idle.Plugin, last.idle.Seconds)
	fmt.Fprintln(w, "### Targets")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| what | target | measured | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|")
	fmt.Fprintf(w, "| marginal plugin memory per mount (least-squares slope of plugin RSS over N = %s) | at most %d KiB | %.1f KiB, of which the floor plugin pays %.1f KiB too | %s |\n",
		counts(steps), maxSlopeKiB, memSlope, floorSlope, verdict(memSlope <= maxSlopeKiB, fmt.Sprintf("%.1f× the target; net of the floor, %.1f KiB, %s",
			memSlope/maxSlopeKiB, memSlope-floorSlope, netOfFloor)))
	fmt.Fprintf(w, "| plugin CPU over two idle minutes at %d mounts | under %.0f%% of one core | %.2f%% (%.2f s) | %s |\n",
		last.n, maxIdleCPUPct, cpu, last.idle.Plugin.CPU, verdict(cpu < maxIdleCPUPct, fmt.Sprintf("%.1f× the target", cpu/maxIdleCPUPct)))
	for _, r := range last.reads {
		fmt.Fprintf(w, "| token reads/s of one mount with %d mounts against one mount alone, %d clients | at least %.2f | %.3f (IQR %.3f–%.3f) | %s |\n",
			last.n, r.Clients, minReadRatio, r.Ratio, r.Q1, r.Q3, verdict(r.Ratio >= minReadRatio, readsMissedBy(r)))
	}
	once := h.RefreshCalls == h.Rotations && h.Reused == 0 && h.Rejected == 0 && h.Logins == 0 && h.MinRotations >= h.Want && h.Unhealthy == 0
	fmt.Fprintf(w, "| herd of %d mounts: refreshes | each mount once per rotation (%d to watch), all before expiry | %d calls for %d rotations, %d–%d per mount, %d late, %d re-used, %d logins | %s |\n",
		h.N, h.Want, h.RefreshCalls, h.Rotations, h.MinRotations, h.MaxRotations, h.Late, h.Reused, h.Logins,
		verdict(once && h.Late == 0, "see the herd table"))
	fmt.Fprintf(w, "| herd of %d mounts: calls to Teletracker per second | never more than %d | peak %d; %d seconds over %d | %s |\n",
		h.N, h.MaxPerSecond, h.PeakPerSecond, h.SecondsOver, h.MaxPerSecond,
		verdict(h.PeakPerSecond <= h.MaxPerSecond, fmt.Sprintf("%.0f× the limit", float64(h.PeakPerSecond)/float64(h.MaxPerSecond))))
	fmt.Fprintln(w)
}

func counts(steps []step) string {
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = fmt.Sprint(s.n)
	}
	return strings.Join(out, ", ")
}

func resources(w io.Writer, steps []step) {
	fmt.Fprintln(w, "### Memory and CPU at rest")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| mounts | plugin RSS | of which anonymous | plugin fds | plugin threads | floor plugin RSS | solo plugin RSS | Vault RSS | plugin CPU | floor CPU | Vault CPU | setup of the engine mounts added (total so far) | load avg, others' CPU |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	total := 0.0
	for _, s := range steps {
		r := s.idle
		total += s.setup.Seconds
		fmt.Fprintf(w, "| %d | %s | %s | %d | %d | %s | %s | %s | %.2f s (%.2f%%) | %.2f s | %.2f s (%.2f%%) | %d in %.1f s (%.1f s); enable %.0f ms, config %.0f ms per mount | %.2f–%.2f, %.0f%% |\n",
			s.n, mib(r.Plugin.RSS), mib(r.Plugin.Anon), r.Plugin.FDs, r.Plugin.Threads, mib(r.Floor.RSS), mib(r.Solo.RSS), mib(r.Vault.RSS),
			r.Plugin.CPU, cpuPct(r.Plugin, r.Seconds), r.Floor.CPU, r.Vault.CPU, cpuPct(r.Vault, r.Seconds),
			s.setup.Added, s.setup.Seconds, total, s.setup.Enable.Mean, s.setup.Config.Mean, r.Load[0], r.Load[1], r.Others)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Per mount, least squares over N:")
	fmt.Fprintln(w)
	per := []struct {
		what string
		f    func(step) float64
		unit string
	}{
		{"plugin RSS", func(s step) float64 { return float64(s.idle.Plugin.RSS) }, "KiB"},
		{"plugin anonymous memory (heap and stacks)", func(s step) float64 { return float64(s.idle.Plugin.Anon) }, "KiB"},
		{"plugin open files (sockets included)", func(s step) float64 { return float64(s.idle.Plugin.FDs) }, ""},
		{"plugin threads", func(s step) float64 { return float64(s.idle.Plugin.Threads) }, ""},
		{"floor plugin RSS (what the SDK costs any multiplexed plugin)", func(s step) float64 { return float64(s.idle.Floor.RSS) }, "KiB"},
		{"floor plugin open files", func(s step) float64 { return float64(s.idle.Floor.FDs) }, ""},
		{"Vault RSS (per engine mount and floor mount together)", func(s step) float64 { return float64(s.idle.Vault.RSS) }, "KiB"},
		{"plugin CPU, two idle minutes", func(s step) float64 { return 1000 * s.idle.Plugin.CPU }, "ms"},
		{"Vault CPU, two idle minutes", func(s step) float64 { return 1000 * s.idle.Vault.CPU }, "ms"},
	}
	for _, p := range per {
		fmt.Fprintf(w, "- %s: %.3f %s\n", p.what, slopeOf(steps, p.f), p.unit)
	}
	fmt.Fprintln(w)
	if steps[0].idle.Runtime == nil {
		return
	}
	fmt.Fprintln(w, "The plugin's Go runtime at the end of each window (built with the pprof tag):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| mounts | goroutines | heap in use | heap allocated | stacks | collections in the window (forced) | allocated per tick |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|")
	allocated := func(s step) float64 { return perTick(s.idle, float64(s.idle.Runtime.Allocated)) / 1024 }
	for _, s := range steps {
		rt := s.idle.Runtime
		fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %d (%d) | %s |\n", s.n, rt.Goroutines, mib(rt.HeapInuse/1024),
			mib(rt.HeapAlloc/1024), mib(rt.StackInuse/1024), rt.GCs, rt.ForcedGCs, mib(int64(allocated(s))))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Per mount: %.2f goroutines, %.1f KiB of heap in use, %.1f KiB of stacks, %.1f KiB allocated per tick "+
		"(the profiler's own answers to this script allocate too, the same at every N).\n\n",
		slopeOf(steps, func(s step) float64 { return float64(s.idle.Runtime.Goroutines) }),
		slopeOf(steps, func(s step) float64 { return float64(s.idle.Runtime.HeapInuse) / 1024 }),
		slopeOf(steps, func(s step) float64 { return float64(s.idle.Runtime.StackInuse) / 1024 }),
		slopeOf(steps, allocated))
}

func ticks(w io.Writer, steps []step) {
	fmt.Fprintln(w, "### One tick's work, storage, and token reads")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| mounts | ticks in the window | tick: until the plugin's last CPU use | plugin CPU per tick | Vault CPU per tick | rollback time per mount: engine, floor | storage ops per tick (per mount): get, put, list | upstream calls at rest | token reads/s: this process, solo | ratio (IQR) | CPU µs per read: plugin, solo; Vault for each |")
	fmt.Fprintln(w, "|---:|---:|---|---:|---:|---:|---|---:|---|---|---|")
	for _, s := range steps {
		r := s.idle
		var spans []string
		var pSum, vSum float64
		for _, t := range r.Ticks {
			spans = append(spans, fmt.Sprintf("%.0f ms", t.SpanMs))
			pSum += t.PluginMs
			vSum += t.VaultMs
		}
		per := func(ms, n float64) float64 {
			if n == 0 {
				return 0
			}
			return ms / n
		}
		ops := perTick(r, storageOps(r))
		var rates, ratios, cpus []string
		for _, x := range s.reads {
			rates = append(rates, fmt.Sprintf("%.0f, %.0f (%d clients)", x.First, x.Second, x.Clients))
			ratios = append(ratios, fmt.Sprintf("%.3f (%.3f–%.3f)", x.Ratio, x.Q1, x.Q3))
			cpus = append(cpus, fmt.Sprintf("%.0f, %.0f; %.0f, %.0f", x.FirstPluginUs, x.SecondPluginUs, x.FirstVaultUs, x.SecondVaultUs))
		}
		fmt.Fprintf(w, "| %d | %d (%.0f rollbacks of %d mounts) | %s | %.0f ms | %.0f ms | %.2f ms, %.2f ms | %.0f (%.2f): %.0f, %.0f, %.0f | %d | %s | %s | %s |\n",
			s.n, len(r.Ticks), r.Rollbacks, r.Mounts, strings.Join(spans, ", "), perTick(r, pSum), perTick(r, vSum),
			per(r.EngineRollbackMs, r.EngineRollbacks), per(r.FloorRollbackMs, r.FloorRollbacks),
			ops, ops/float64(s.n), perTick(r, r.Storage["get"]), perTick(r, r.Storage["put"]), perTick(r, r.Storage["list"]),
			r.UpstreamCalls, strings.Join(rates, "; "), strings.Join(ratios, "; "), strings.Join(cpus, " / "))
	}
	fmt.Fprintln(w)
	opsSlope := slopeOf(steps, func(s step) float64 { return perTick(s.idle, storageOps(s.idle)) })
	cpuSlope := slopeOf(steps, func(s step) float64 {
		sum := 0.0
		for _, t := range s.idle.Ticks {
			sum += t.PluginMs + t.VaultMs
		}
		return perTick(s.idle, sum)
	})
	fmt.Fprintf(w, "Per mount and tick, least squares over N: %.2f storage operations, %.3f ms of plugin and Vault CPU.\n\n", opsSlope, cpuSlope)
}

// herdTable is the herd's table; what names what the herd is of.
func herdTable(w io.Writer, h herdResult, what string) {
	if what == "mounts" {
		fmt.Fprintln(w, "### The herd")
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "| "+what+" | configured in (peak logins/s) | watched | refresh calls | rotations (per "+strings.TrimSuffix(what, "s")+") | re-used, rejected, late | logins | unhealthy at the end | bursts: at, calls, span | peak calls/s | seconds over the limit | plugin open files: peak, end | plugin RSS: peak, end | calls a second needed, at most (turns) |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
	crossed := ""
	if h.CrossedTick {
		crossed = ", crossing a tick"
	}
	if h.Refused > 0 {
		crossed += fmt.Sprintf("; %d writes answered 429 and sent again, the slowest %.0f s", h.Refused, h.SlowestConfig)
	}
	var ev []string
	for _, e := range h.Events {
		ev = append(ev, fmt.Sprintf("+%.0f s, %d, %.0f ms", e.At, e.Calls, e.SpanMs))
	}
	fmt.Fprintf(w, "| %d | %.1f s%s (%d) | %.0f s | %d | %d (%d–%d) | %d, %d, %d | %d | %d | %s | %d | %d | %d, %d | %s, %s | %.2f (%.1f) |\n",
		h.N, h.ConfigSeconds, crossed, h.ConfigPeak, h.Seconds, h.RefreshCalls, h.Rotations, h.MinRotations, h.MaxRotations,
		h.Reused, h.Rejected, h.Late, h.Logins, h.Unhealthy, strings.Join(ev, "; "), h.PeakPerSecond, h.SecondsOver,
		h.PeakFDs, h.Plugin.FDs, mib(h.PeakRSS), mib(h.Plugin.RSS), h.NeededMax, h.Budget)
	fmt.Fprintln(w)
}
