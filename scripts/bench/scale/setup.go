package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

// setupResult is what one setup step took.
type setupResult struct {
	// N is the number of engine mounts (or accounts) after the step; Added were new.
	N     int `json:"n"`
	Added int `json:"added"`
	// Seconds is the step's wall time.
	Seconds float64 `json:"seconds"`
	// Enable and Config are the latencies of the mount enables and of the
	// config writes (each a login to the fake), in milliseconds.
	Enable latencies `json:"enable_ms"`
	Config latencies `json:"config_ms"`
}

// latencies summarise the latencies of one kind of request, in ms.
type latencies struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	Max  float64 `json:"max"`
}

func summarise(ds []time.Duration) latencies {
	if len(ds) == 0 {
		return latencies{}
	}
	slices.Sort(ds)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return latencies{Mean: ms(sum / time.Duration(len(ds))), P50: ms(ds[len(ds)/2]), Max: ms(ds[len(ds)-1])}
}

// setup enables the engine mounts from..to and configures each against the
// fake, -conc at a time: what an operator's script adding accounts does.
// With -accounts-mount, it creates the named accounts from..to of that
// mount instead (accounts/<prefix>NNNNN, each a login to the fake).
func setup(args []string) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	addr := fs.String("addr", "", "Vault address")
	token := fs.String("token", "", "Vault token")
	prefix := fs.String("prefix", "m", "mount path prefix; mounts are <prefix>0001 and on")
	plugin := fs.String("plugin", "teletracker", "registered plugin name")
	version := fs.String("version", "", "registered plugin version")
	from := fs.Int("from", 1, "first mount to add")
	to := fs.Int("to", 1, "last mount to add")
	fake := fs.String("fake", "", "the fake Teletracker's URL, for base_url; none: the mounts are not configured")
	conc := fs.Int("conc", 4, "mounts set up at a time")
	accounts := fs.String("accounts-mount", "", "create named accounts of this mount instead of mounts; -prefix names them")
	out := fs.String("out", "", "write the result here as JSON (when set)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	limit := 5000
	if *accounts != "" {
		limit = 99999
	}
	if *from < 1 || *to < *from || *to > limit || *conc < 1 || *conc > 64 {
		return fmt.Errorf("need 1 <= from <= to <= %d and conc 1-64", limit)
	}
	v := newVault(*addr, *token)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if *accounts != "" {
		return setupAccounts(ctx, v, *accounts, *prefix, *fake, *from, *to, *conc, *out)
	}

	var mu sync.Mutex
	var enables, configs []time.Duration
	start := time.Now()
	err := forMounts(*from, *to, *conc, func(i int) error {
		path := mountPath(*prefix, i)
		t0 := time.Now()
		mount := map[string]any{"type": *plugin}
		if *version != "" {
			mount["plugin_version"] = *version
		}
		if err := v.call(ctx, http.MethodPost, "sys/mounts/"+path, mount, nil); err != nil {
			return err
		}
		t1 := time.Now()
		var err error
		if *fake != "" {
			err = v.call(ctx, http.MethodPost, path+"/config", map[string]any{"base_url": *fake, "username": "demo", "password": "demo-password"}, nil)
		}
		mu.Lock()
		enables = append(enables, t1.Sub(t0))
		if *fake != "" {
			configs = append(configs, time.Since(t1))
		}
		mu.Unlock()
		return err
	})
	if err != nil {
		return err
	}
	res := setupResult{N: *to, Added: *to - *from + 1, Seconds: time.Since(start).Seconds(),
		Enable: summarise(enables), Config: summarise(configs)}
	fmt.Fprintf(os.Stderr, "scale: %d %s mounts added in %.1f s\n", res.Added, *plugin, res.Seconds)
	if *out == "" {
		return nil
	}
	return writeJSON(*out, res)
}

// setupAccounts creates the named accounts from..to of mount against the
// fake, conc at a time, and writes what it took to out (when set).
func setupAccounts(ctx context.Context, v *vault, mount, prefix, fake string, from, to, conc int, out string) error {
	var mu sync.Mutex
	var configs []time.Duration
	start := time.Now()
	err := forMounts(from, to, conc, func(i int) error {
		t0 := time.Now()
		err := v.call(ctx, http.MethodPost, mount+"/accounts/"+accountName(prefix, i),
			map[string]any{"base_url": fake, "username": "demo", "password": "demo-password"}, nil)
		mu.Lock()
		configs = append(configs, time.Since(t0))
		mu.Unlock()
		return err
	})
	if err != nil {
		return err
	}
	res := setupResult{N: to, Added: to - from + 1, Seconds: time.Since(start).Seconds(), Config: summarise(configs)}
	fmt.Fprintf(os.Stderr, "scale: %d accounts of %s added in %.1f s\n", res.Added, mount, res.Seconds)
	if out == "" {
		return nil
	}
	return writeJSON(out, res)
}
