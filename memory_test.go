package teletracker

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func TestReleaseIdleMemory(t *testing.T) {
	big := make([]byte, 4*maxIdleHeap)
	for i := range big {
		big[i] = 1
	}
	before := gcCycles()
	releaseIdleMemory()
	if gcCycles() == before {
		t.Fatal("a heap over maxIdleHeap was not collected")
	}
	runtime.KeepAlive(big)
}
