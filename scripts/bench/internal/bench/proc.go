// Package bench holds what the benchmark's programs (scripts/bench/load and
// scripts/bench/scale) share: CPU accounting from /proc, and the ratio of
// reads one writes and the other reads.
package bench

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is USER_HZ, the unit of /proc's CPU times: 100 on Linux, whatever
// the kernel's tick.
const userHZ = 100

// ProcCPU is the CPU time process pid has used (all its threads), from
// utime and stime in /proc/<pid>/stat; 0 for pid 0 or on error.
func ProcCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis, where field 3 (state) begins.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / userHZ)
}

// MachineBusy is the CPU time all CPUs have spent other than idle, from the
// first line of /proc/stat; 0 on error.
func MachineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy int64
	for i := 1; i < len(f) && i <= 8; i++ {
		if i == 4 || i == 5 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(f[i], 10, 64)
		busy += n
	}
	return time.Duration(busy) * (time.Second / userHZ)
}
