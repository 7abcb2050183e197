package main

import (
	"strings"
	"testing"

	teletracker "github.com/teletracker/vault-plugin-secrets-teletracker"
)

// TestCallsPerSecondFlag: -calls-per-second takes 1 to 1000 (default 10),
// and refuses anything else, NaN among it, before the plugin serves.
func TestCallsPerSecondFlag(t *testing.T) {
	for args, want := range map[string]float64{
		"":                               teletracker.DefaultCallsPerSecond,
		"-calls-per-second=1":            1,
		"-calls-per-second=1000":         1000,
		"-calls-per-second=25.5":         25.5,
		"-calls-per-second 50":           50,
		"-ca-cert= -calls-per-second=20": 20,
	} {
		_, got, err := parseArgs(strings.Fields(args))
		if err != nil || got != want {
			t.Errorf("%q: %v, %v; want %v", args, got, err, want)
		}
	}
	for _, args := range []string{"-calls-per-second=0", "-calls-per-second=-5", "-calls-per-second=0.99", "-calls-per-second=1001",
		"-calls-per-second=NaN", "-calls-per-second=Inf", "-calls-per-second=ten", "-calls-per-second=", "-no-such-flag"} {
		if _, got, err := parseArgs(strings.Fields(args)); err == nil {
			t.Errorf("%q: accepted as %v", args, got)
		}
	}
}
