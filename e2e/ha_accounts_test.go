package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// The HA scenario with many named accounts in one mount: the cluster,
// readers and checks of ha_test.go, with tokens that live a minute so that
// reads keep refreshes going while the active node steps down.

const (
	// haAccounts is how many named accounts the mount holds.
	haAccounts = 100
	// haAccountLifetime is the fake's token lifetime. With the accounts'
	// request_timeout of haAccountTimeout a token is due (a read replaces
	// it) 15.5 s after it was obtained and served until 55 s: 100 accounts
	// need about 6.5 refreshes a second, under the process's budget of 9,
	// with 40 s to spare for a failover.
	haAccountLifetime = time.Minute
	haAccountTimeout  = "2s"
	// haAccountWriters is how many account writes are sent at once; each
	// waits for its login's turn in the pacer.
	haAccountWriters = 10
)

// TestHAAccounts: a mount with 100 named accounts, their tokens read in
// turn through every node and refreshed as they fall due, while the active
// node steps down with refreshes under way. Reads recover within seconds;
// the new active node carries every session on (each account is refreshed
// by it, from its stored refresh token, without a new login); no refresh
// token is re-used or refused; no account ends degraded or
// reauth_required, and each holds every refresh the fake answered; only
// the active node ever called Teletracker.
func TestHAAccounts(t *testing.T) {
	defaultAccountOnly(t, "it names its 100 accounts itself")
	t.Parallel() // a long test: it runs beside the other long ones
	began := time.Now()
	f := startFake(t, "-token-lifetime", haAccountLifetime.String())
	cl := startRaftCluster(t, haNodeCount)
	t.Logf("cluster of %d Raft voters ready after %v", haNodeCount, since(began))
	first := cl.waitActive(t, time.Time{}, electLimit)
	enableEngine(t, first.client)

	names, paths := make([]string, haAccounts), make([]string, haAccounts)
	for i := range names {
		names[i] = fmt.Sprintf("acct-%03d", i)
		paths[i] = accountPath(haMount, "token", names[i])
	}
	setup, err := first.client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	setup.SetToken(cl.token)
	setup.SetClientTimeout(time.Minute) // a write waits for its turn
	createdFrom := time.Now()
	work, errs := make(chan string), make(chan error, haAccounts)
	var wg sync.WaitGroup
	for range haAccountWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				if err := writeAccount(setup, haMount, name, f, map[string]interface{}{"request_timeout": haAccountTimeout}); err != nil {
					errs <- fmt.Errorf("account %s: %w", name, err)
				}
			}
		}()
	}
	for _, name := range names {
		work <- name
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d accounts created through %s in %v", haAccounts, first.id, since(createdFrom))
	cl.probe(t, f, paths[0], "")
	cl.probe(t, f, paths[haAccounts-1], "")

	load := startHALoad(t, cl, paths, false)
	t.Cleanup(load.stopAll)

	// Step down once reads have refreshed half the accounts: the rest fall
	// due around the step-down, so refreshes are under way as it comes.
	if err := waitFor(haAccountLifetime, func() error {
		if n := f.stats(t).Refreshes; n < haAccounts/2 {
			return fmt.Errorf("%d refreshes", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("the reads did not refresh half the accounts: %v", err)
	}
	atStep := f.stats(t)
	stepAt := time.Now()
	if out, err := first.v.cli(cl.token, "operator", "step-down"); err != nil {
		t.Fatalf("vault operator step-down on %s: %v\n%s", first.id, err, out)
	}
	second := cl.waitActive(t, stepAt, electLimit)
	elected := time.Now()
	cl.probe(t, f, paths[0], "")
	recovered := time.Now()
	load.window(stepAt, recovered)
	t.Logf("step-down of %s after %d refreshes: %s active after %v (its active_time: %v); reads through every node succeed again after %v",
		first.id, atStep.Refreshes, second.id, elected.Sub(stepAt).Round(time.Millisecond),
		second.activeTime.Sub(stepAt).Round(time.Millisecond), recovered.Sub(stepAt).Round(time.Millisecond))
	var before, during int
	for _, at := range f.stats(t).RefreshCallTimes {
		switch {
		case at.After(stepAt.Add(-time.Second)) && at.Before(stepAt):
			before++
		case !at.Before(stepAt) && at.Before(second.activeTime):
			during++
		}
	}
	t.Logf("refresh calls the fake received in the second before the step-down: %d; from it until %s was active: %d", before, second.id, during)
	if d := recovered.Sub(elected); d > haRecoveryLimit {
		t.Errorf("after the step-down reads took %v beyond the election to succeed again, want at most %v", d, haRecoveryLimit)
	}

	// Every account's session goes on from the new active node: each gets
	// a token obtained after that node became active (expiring a lifetime
	// after it), while the reads go on.
	list := func() map[string]map[string]interface{} {
		l, err := second.client.Logical().List(haMount + "/accounts")
		if err != nil || l == nil {
			t.Fatalf("list through %s: %v", second.id, err)
		}
		info := map[string]map[string]interface{}{}
		for name, v := range l.Data["key_info"].(map[string]interface{}) {
			info[name] = v.(map[string]interface{})
		}
		if got := len(listKeys(l)); got != haAccounts || len(info) != haAccounts {
			t.Fatalf("the list through %s has %d names and %d key_info entries, want %d", second.id, got, len(info), haAccounts)
		}
		return info
	}
	carriedBy := second.activeTime.Add(haAccountLifetime)
	if err := waitFor(haAccountLifetime, func() error {
		stale := 0
		for _, info := range list() {
			if exp, err := time.Parse(time.RFC3339, info["expires_at"].(string)); err != nil || exp.Before(carriedBy) {
				stale++
			}
		}
		if stale > 0 {
			return fmt.Errorf("%d accounts hold no token obtained by %s yet", stale, second.id)
		}
		return nil
	}); err != nil {
		t.Fatalf("within a token lifetime of the step-down: %v", err)
	}
	carried := time.Now()
	load.stopAll()
	load.check(t)
	cl.checkOnlyActiveCalled(t, f, load.leaderObservations(), 1)

	// Each account: healthy, with no failure, holding every refresh the
	// fake answered, and a live token served through a standby too.
	st := f.stats(t)
	var refreshCount int64
	for name, info := range list() {
		if info["state"] != "healthy" || jsonInt(t, info["consecutive_failures"]) != 0 {
			t.Errorf("key_info of %s: %v, want healthy without failures", name, info)
		}
	}
	standby := cl.standby(second)
	for _, name := range names {
		s, err := second.client.Logical().Read(accountPath(haMount, "status", name))
		if err != nil || s == nil {
			t.Fatalf("status/%s through %s: %v", name, second.id, err)
		}
		if s.Data["state"] != "healthy" {
			t.Errorf("status/%s: %v, want healthy", name, s.Data)
		}
		refreshCount += jsonInt(t, s.Data["refresh_count"])
		tok, err := standby.client.Logical().Read(accountPath(haMount, "token", name))
		if err != nil || tok == nil || !f.live(t, tok.Data["token"].(string)) {
			t.Errorf("token/%s through %s: %v, want a live token", name, standby.id, err)
		}
	}
	if refreshCount != st.Refreshes {
		t.Errorf("the accounts' refresh_count add up to %d, the fake answered %d refreshes: a refresh's outcome was lost", refreshCount, st.Refreshes)
	}
	if st.LoginCalls != haAccounts || st.Logins != haAccounts || st.ReusedRefreshTokens != 0 || st.RejectedRefreshes != 0 ||
		st.Refreshes != st.RefreshCalls || st.LateRefreshes != 0 || st.Refreshes < atStep.Refreshes+haAccounts {
		t.Errorf("fake stats: %d login calls, %d logins, %d refresh calls, %d refreshes (%d at the step-down), %d re-used, %d rejected, %d late; "+
			"want %d logins (one per account write), every refresh call answered, none re-used, rejected or late, and each account refreshed after the step-down",
			st.LoginCalls, st.Logins, st.RefreshCalls, st.Refreshes, atStep.Refreshes, st.ReusedRefreshTokens, st.RejectedRefreshes, st.LateRefreshes, haAccounts)
	}
	t.Logf("%d reads; %d refreshes, %d after the step-down; every account carried on by %s %v after the step-down; total %v",
		load.readCount(), st.Refreshes, st.Refreshes-atStep.Refreshes, second.id, carried.Sub(stepAt).Round(time.Millisecond), since(began))
}
