//go:build pprof

// Built with the pprof tag (make bench-scale does, when BENCH_SCALE_PROFILE
// is set), the plugin also serves Go's profiler on the loopback address in
// $TELETRACKER_PPROF_ADDR, to show what each mount costs the process.
// Release builds have no such tag, and none of this.
package main

import (
	"errors"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

func init() {
	addr := os.Getenv("TELETRACKER_PPROF_ADDR")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err == nil && (ip == nil || !ip.IsLoopback()) {
		err = errors.New("TELETRACKER_PPROF_ADDR must be a loopback IP and port")
	}
	var ln net.Listener
	if err == nil {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		fatal(err)
	}
	go func() { _ = http.Serve(ln, nil) }()
}
