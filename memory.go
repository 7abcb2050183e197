package teletracker

import (
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// memory.go hands back to the OS the memory a burst of requests left behind.
// An idle Go process is collected only every two minutes and returns freed
// memory slowly after that, so without this the plugin would sit near its
// peak RSS long after the load is gone (see BENCHMARKS.md, cost at rest).

// maxIdleHeap is how much reclaimable heap (garbage, and free memory not yet
// returned to the OS) the process may hold before a tick collects it.
const maxIdleHeap = 4 << 20

// heapMetrics: the heap in objects (live and garbage not yet collected),
// the live part as of the last collection, and free memory still held.
// (Unused parts of spans in use are not counted: nothing returns them.)
var heapMetrics = []string{
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/free:bytes",
}

// releaseMemory drops idle transports and runs releaseIdleMemory once a
// tick for the whole process,
// on the first mount's tick after a tick interval (now on a monotonic
// clock), not on every mount's: each would collect the whole heap.
func (p *process) releaseMemory(now time.Time) {
	last := p.released.Load()
	if last != nil && now.Sub(*last) < tickInterval || !p.released.CompareAndSwap(last, &now) {
		return
	}
	p.dropIdleTransports(now)
	releaseIdleMemory()
}

// releaseIdleMemory collects garbage and returns free memory to the OS when
// more than maxIdleHeap of the heap could be reclaimed. It does nothing once
// a burst is over and one call has released it.
func releaseIdleMemory() {
	sample := make([]rtmetrics.Sample, len(heapMetrics))
	for i, name := range heapMetrics {
		sample[i].Name = name
	}
	rtmetrics.Read(sample)
	var v [3]uint64
	for i, s := range sample {
		if s.Value.Kind() == rtmetrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	garbage := v[0] - min(v[1], v[0])
	if garbage+v[2] > maxIdleHeap {
		debug.FreeOSMemory()
	}
}
