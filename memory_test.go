package teletracker

import (
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"testing"
	"time"
)

func gcCycles() uint64 {
	s := []rtmetrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

// TestReleaseIdleMemory: garbage over maxIdleHeap is collected and released;
// a heap of live objects alone, however large, is left alone.
func TestReleaseIdleMemory(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no collections but ours
	runtime.GC()

	live := make([]byte, 4*maxIdleHeap)
	for i := range live {
		live[i] = 1
	}
	runtime.GC() // the live bytes are now known to be live
	debug.FreeOSMemory()
	before := gcCycles()
	releaseIdleMemory()
	if gcCycles() != before {
		t.Fatal("a heap of live objects was collected again")
	}

	func() { // garbage once it returns
		junk := make([][]byte, 0, 4*maxIdleHeap/4096)
		for i := 0; i < cap(junk); i++ {
			junk = append(junk, make([]byte, 4096))
		}
		runtime.KeepAlive(junk)
	}()
	before = gcCycles()
	releaseIdleMemory()
	if gcCycles() == before {
		t.Fatal("garbage over maxIdleHeap was not collected")
	}
	runtime.KeepAlive(live)
}

// TestReleaseMemoryOncePerTick: however many mounts tick, the process
// releases memory at most once a tick interval.
func TestReleaseMemoryOncePerTick(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	garbage := func() {
		junk := make([][]byte, 0, 4*maxIdleHeap/4096)
		for i := 0; i < cap(junk); i++ {
			junk = append(junk, make([]byte, 4096))
		}
		runtime.KeepAlive(junk)
	}
	p, t0 := newProcess(DefaultCallsPerSecond), testStart
	for _, tc := range []struct {
		at      time.Duration
		collect bool
	}{{0, true}, {30 * time.Second, false}, {59 * time.Second, false}, {61 * time.Second, true}} {
		garbage()
		before := gcCycles()
		p.releaseMemory(t0.Add(tc.at))
		if collected := gcCycles() != before; collected != tc.collect {
			t.Fatalf("at +%v: collected %v, want %v", tc.at, collected, tc.collect)
		}
	}
}
