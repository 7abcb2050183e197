package teletracker

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/time/rate"
)

// TestMountsShareOnePacer: mounts of one process that fall due together
// call Teletracker no faster than maxCallRate between them, and each once.
func TestMountsShareOnePacer(t *testing.T) {
	const mounts = 25
	p := newProcess()
	envs := make([]*testEnv, mounts)
	for i := range envs {
		envs[i] = newTestEnv(t)
		envs[i].configure(nil)
		envs[i].b.proc, envs[i].b.client = p, nil // as NewFactory does for every mount it makes
		envs[i].clock.Add(49 * time.Minute)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, e := range envs {
		wg.Add(1)
		go func() { defer wg.Done(); _ = e.tick() }()
	}
	wg.Wait()
	// Paced at maxCallRate with a burst of one, n calls take (n-1)/rate at
	// least, however fast or loaded the machine is.
	if took, least := time.Since(start), time.Duration(mounts-1)*time.Second/maxCallRate; took < least {
		t.Fatalf("%d calls in %v, under the %v the pace allows", mounts, took, least)
	}
	for i, e := range envs {
		if st := e.fake.Stats(); st.Refreshes != 1 || st.RefreshCalls != 1 {
			t.Fatalf("mount %d: %+v, want exactly one refresh", i, st)
		}
	}
	if len(p.transports) != 1 {
		t.Fatalf("%d HTTP transports for mounts without a ca_cert, want one", len(p.transports))
	}
}

// TestPacedCallDeferred: a call that would wait longer than maxPaceWait for
// its turn is deferred: no marker, no failure, nothing stored, and the
// answer says when.
func TestPacedCallDeferred(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b.proc.pacer = rate.NewLimiter(rate.Every(time.Hour), 1)
	e.b.proc.pacer.Allow() // the config write's turn, taken
	before := e.stored()
	e.clock.Add(time.Minute)
	resp, err := e.request(logical.UpdateOperation, "rotate", nil)
	if statusOf(resp, err) != http.StatusTooManyRequests {
		t.Fatalf("resp=%v err=%v", resp, err)
	}
	if r := e.stored(); r.State != stateReady || r.Failures != 0 || r.LastCallAt != before.LastCallAt || e.fake.Stats().RefreshCalls != 0 {
		t.Fatalf("a deferred call changed the record or called: %+v", r)
	}
	if err := e.b.periodicFunc(context.Background(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatalf("a deferred tick is no error for Vault to log: %v", err)
	}
}
