package teletracker

import (
	"runtime/debug"
	"runtime/metrics"
)

// memory.go hands back to the OS the memory a burst of requests left behind.
// An idle Go process is collected only every two minutes and returns freed
// memory slowly after that, so without this the plugin would sit near its
// peak RSS long after the load is gone (see BENCHMARKS.md, cost at rest).

// maxIdleHeap is the heap size above which a tick collects and releases.
// The engine's live heap is a few MiB whatever the number of mounts.
const maxIdleHeap = 8 << 20

// heapMetric is the runtime's count of all heap memory it holds.
const heapMetric = "/memory/classes/heap/objects:bytes"

// releaseIdleMemory collects garbage and returns free memory to the OS when
// the heap is larger than maxIdleHeap. It is called on Vault's tick: once a
// minute per mount, and a no-op after the first call has shrunk the heap.
func releaseIdleMemory() {
	sample := []metrics.Sample{{Name: heapMetric}, {Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(sample)
	var held uint64
	for _, s := range sample {
		if s.Value.Kind() == metrics.KindUint64 {
			held += s.Value.Uint64()
		}
	}
	if held > maxIdleHeap {
		debug.FreeOSMemory()
	}
}
