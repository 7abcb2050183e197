package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// The HA scenario: a three-node Vault cluster on integrated Raft storage,
// the engine configured once, clients reading the token through every node
// and rotations forced, while the active node is stepped down and later
// killed. The cluster comes from the harness (cluster_test.go);
// scripts/ha-test.sh runs just this test, verbosely.

const (
	haNodeCount      = 3
	haReadersPerNode = 3
	haMount          = "teletracker"
	// haReadPause is each reader's pause between two reads.
	haReadPause = 50 * time.Millisecond
	// haRotatePause is the rotator's pause between two forced rotations;
	// most are refused (429) by the engine's 10 s floor, which is the point:
	// a rotation is nearly always about to be allowed.
	haRotatePause = 300 * time.Millisecond
	// haRefreshFloor is the engine's least time between two refreshes.
	haRefreshFloor = 10 * time.Second
	// haRecoveryLimit is how long after a new active node is elected reads
	// through every surviving node may take to succeed again.
	haRecoveryLimit = 15 * time.Second
)

// TestHAFailover: with readers on every node and rotations forced, the
// active node is stepped down, and later (between two rotations) killed.
// After each failover reads through every surviving node succeed again
// within seconds and serve the live token, no refresh token is ever re-used,
// no login is needed beyond the config write's, and only the active node
// ever calls Teletracker. All of it for testAccount.
func TestHAFailover(t *testing.T) {
	t.Parallel() // a long test: it runs beside the other long ones
	began := time.Now()
	f := startFake(t)
	cl := startRaftCluster(t, haNodeCount)
	t.Logf("cluster of %d Raft voters ready after %v", haNodeCount, since(began))

	first := cl.waitActive(t, time.Time{}, electLimit)
	c := first.client
	enableEngine(t, c)
	configureAccount(t, c, haMount, testAccount, f, nil)
	cl.probeAll(t, f, "")
	t.Logf("engine configured through %s, token served by all nodes", first.id)

	load := startHALoad(t, cl, []string{accountPath(haMount, "token", testAccount)}, true)
	t.Cleanup(load.stopAll)

	// Steady state, with rotations forced throughout. Step down when the
	// engine's floor is about to let the next one through, so that a
	// rotation is likely in flight while the active node steps down.
	r1 := load.waitRotations(t, time.Time{}, 1, 15*time.Second)
	if d := time.Until(r1.Add(haRefreshFloor)); d > 0 {
		time.Sleep(d)
	}

	// Failover 1: step-down, through the CLI as an operator would.
	stepAt := time.Now()
	if out, err := first.v.cli(cl.token, "operator", "step-down"); err != nil {
		t.Fatalf("vault operator step-down on %s: %v\n%s", first.id, err, out)
	}
	second := cl.waitActive(t, stepAt, electLimit)
	electedStep := time.Now()
	token := cl.probeAll(t, f, "")
	recoveredStep := time.Now()
	load.window(stepAt, recoveredStep)
	t.Logf("step-down of %s: %s active after %v (its active_time: %v); reads through every node succeed again after %v",
		first.id, second.id, electedStep.Sub(stepAt).Round(time.Millisecond),
		second.activeTime.Sub(stepAt).Round(time.Millisecond), recoveredStep.Sub(stepAt).Round(time.Millisecond))
	if d := recoveredStep.Sub(electedStep); d > haRecoveryLimit {
		t.Errorf("after the step-down reads took %v beyond the election to succeed again, want at most %v", d, haRecoveryLimit)
	}

	// The new active node serves for a while, with reads and rotations
	// forced through every node (the standbys forward them). Right after
	// its second forced rotation, stop forcing them; the result must be
	// stored and served everywhere.
	load.waitRotations(t, electedStep, 2, 3*haRefreshFloor)
	load.stopRotator()
	token2 := cl.probeAll(t, f, "")
	if token2 == token {
		t.Fatal("the rotations after the step-down did not change the token")
	}
	cl.checkSession(t, f, second)

	// Failover 2: SIGKILL of the active node, between rotations: nothing
	// is in flight (the token lives an hour, so neither reads nor ticks
	// refresh it, and the rotator is stopped).
	load.stopReaders(second)
	second.down.Store(true)
	killAt := time.Now()
	second.v.kill()
	second.killed = time.Now()
	third := cl.waitActive(t, killAt, electLimit)
	electedKill := time.Now()
	token3 := cl.probeAll(t, f, token2)
	recoveredKill := time.Now()
	load.window(killAt, recoveredKill)
	t.Logf("SIGKILL of %s, %v after its last rotation: %s active after %v (its active_time: %v); reads through every surviving node succeed again after %v",
		second.id, killAt.Sub(load.lastRotation()).Round(time.Millisecond), third.id, electedKill.Sub(killAt).Round(time.Millisecond),
		third.activeTime.Sub(killAt).Round(time.Millisecond), recoveredKill.Sub(killAt).Round(time.Millisecond))
	if d := recoveredKill.Sub(electedKill); d > haRecoveryLimit {
		t.Errorf("after the kill reads took %v beyond the election to succeed again, want at most %v", d, haRecoveryLimit)
	}
	cl.checkSession(t, f, third)

	// The session goes on from the stored refresh token: a rotation
	// through the standby, forwarded to the new active node.
	cl.rotate(t, cl.standby(third), 2*haRefreshFloor)
	if token4 := cl.probeAll(t, f, ""); token4 == token3 {
		t.Fatal("the rotation after the kill did not change the token")
	}
	cl.checkSession(t, f, third)

	// A little more steady state, then stop and judge.
	time.Sleep(time.Second)
	load.stopAll()
	load.check(t)
	cl.checkOnlyActiveCalled(t, f, load.leaderObservations(), 2)

	st := f.stats(t)
	if st.LoginCalls != 1 || st.Logins != 1 || st.ReusedRefreshTokens != 0 || st.RejectedRefreshes != 0 ||
		st.Refreshes != st.RefreshCalls || int(st.Refreshes) < load.rotations()+1 {
		t.Errorf("fake stats %+v: want 1 login (the config write's), no refresh token re-used or rejected, and at least %d refreshes",
			st, load.rotations()+1)
	}
	t.Logf("%d reads, %d forced rotations refused (429), %d refreshes, 1 login; total %v",
		load.readCount(), load.refused(), st.Refreshes, since(began))
}

// enableEngine registers the plugin and mounts it at haMount through c.
func enableEngine(t *testing.T, c *api.Client) {
	t.Helper()
	if err := registerPlugin(c); err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().Mount(haMount, &api.MountInput{Type: pluginName, Config: api.MountConfigInput{PluginVersion: env.version}}); err != nil {
		t.Fatalf("enable %s: %v", haMount, err)
	}
}

// probeAll reads testAccount's token through every live node until all
// succeed, and returns it, as probe does.
func (cl *raftCluster) probeAll(t *testing.T, f *fake, want string) string {
	t.Helper()
	return cl.probe(t, f, accountPath(haMount, "token", testAccount), want)
}

// probe reads the token at path through every live node until all
// succeed, and returns it. The token must be the same everywhere, live on
// the fake, and want when want is not empty. Reads may take electLimit in
// all.
func (cl *raftCluster) probe(t *testing.T, f *fake, path, want string) string {
	t.Helper()
	var token string
	err := waitFor(electLimit, func() error {
		token = ""
		for _, nd := range cl.alive() {
			s, err := nd.client.Logical().Read(path)
			if err != nil {
				return fmt.Errorf("read of %s through %s: %w", path, nd.id, err)
			}
			if s == nil {
				return fmt.Errorf("read of %s through %s: no data", path, nd.id)
			}
			got, _ := s.Data["token"].(string)
			if token != "" && got != token {
				return fmt.Errorf("%s serves another token than the others", nd.id)
			}
			token = got
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reads of %s through every node did not succeed: %v", path, err)
	}
	if want != "" && token != want {
		t.Fatal("after the failover the nodes serve another token than before it, though nothing rotated it")
	}
	if !f.live(t, token) {
		t.Fatalf("the token served at %s is not live on the fake", path)
	}
	return token
}

// rotate forces a rotation of testAccount through nd until one is allowed (429 means the
// engine's floor, so try again), within limit. It returns when it succeeded.
func (cl *raftCluster) rotate(t *testing.T, nd *clusterNode, limit time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := rotateOnce(nd.client)
		if err == nil {
			return time.Now()
		}
		if statusCode(err) != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("rotate through %s: %v", nd.id, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// rotateOnce forces one rotation of testAccount through c. An answer without data is a
// failure: it is a standby's redirect to the active node, not a rotation.
func rotateOnce(c *api.Client) error {
	s, err := c.Logical().Write(accountPath(haMount, "rotate", testAccount), nil)
	if err == nil && (s == nil || s.Data["expires_at"] == nil) {
		err = errors.New("rotate: no data in the answer (a redirect to the active node?)")
	}
	return err
}

// checkSession checks, through the active node, that testAccount is healthy
// and holds the outcome of every refresh the fake answered: nothing is in
// flight and no result was lost in a failover.
func (cl *raftCluster) checkSession(t *testing.T, f *fake, active *clusterNode) {
	t.Helper()
	s, err := active.client.Logical().Read(accountPath(haMount, "status", testAccount))
	if err != nil || s == nil {
		t.Fatalf("status through %s: %v", active.id, err)
	}
	st := f.stats(t)
	if s.Data["state"] != "healthy" || jsonInt(t, s.Data["refresh_count"]) != st.Refreshes || st.RefreshCalls != st.Refreshes {
		t.Fatalf("status %v, fake stats %+v: want healthy with every refresh the fake answered stored", s.Data, st)
	}
	if st.Logins != 1 || st.ReusedRefreshTokens != 0 {
		t.Fatalf("fake stats %+v: want 1 login and no re-used refresh token", st)
	}
}

// haRead is one token read by a reader.
type haRead struct {
	node       *clusterNode
	path       string
	start, end time.Time
	err        error
}

// haRotation is one forced rotation by the rotator.
type haRotation struct {
	node       *clusterNode
	start, end time.Time
	err        error
}

// haLeaderSeen is one sys/leader answer in which a node said it is active.
type haLeaderSeen struct {
	node       *clusterNode
	start, end time.Time
}

// haLoad is the readers, the rotator and the leader poller.
type haLoad struct {
	cl *raftCluster
	// paths are the tokens the readers read, each reader all of them in turn.
	paths []string

	// mu guards the records below.
	mu      sync.Mutex
	reads   []haRead
	rotates []haRotation
	leaders []haLeaderSeen
	windows [][2]time.Time // failover windows: requests may fail in them

	readerEnd map[*clusterNode]chan struct{}   // closed to stop a node's readers
	readers   map[*clusterNode]*sync.WaitGroup // a node's readers
	rotator   chan struct{}                    // closed to stop the rotator
	rotWG     sync.WaitGroup                   // the rotator
	poller    chan struct{}                    // closed to stop the poller
	pollWG    sync.WaitGroup                   // the poller
	stopOnce  sync.Once
}

// startHALoad starts haReadersPerNode readers on every node, reading the
// tokens at paths in turn, the rotator of testAccount when rotate is set,
// and the leader poller, each with clients of its own.
func startHALoad(t *testing.T, cl *raftCluster, paths []string, rotate bool) *haLoad {
	t.Helper()
	l := &haLoad{
		cl:        cl,
		paths:     paths,
		readerEnd: map[*clusterNode]chan struct{}{},
		readers:   map[*clusterNode]*sync.WaitGroup{},
		rotator:   make(chan struct{}),
		poller:    make(chan struct{}),
	}
	clients := func(timeout time.Duration) map[*clusterNode]*api.Client {
		out := map[*clusterNode]*api.Client{}
		for _, nd := range cl.nodes {
			c, err := newHAClient(nd.addr, timeout)
			if err != nil {
				t.Fatal(err)
			}
			c.SetToken(cl.token)
			out[nd] = c
		}
		return out
	}
	for _, nd := range cl.nodes {
		l.readerEnd[nd], l.readers[nd] = make(chan struct{}), &sync.WaitGroup{}
	}
	for i := 0; i < haReadersPerNode; i++ {
		for nd, c := range clients(5 * time.Second) {
			l.readers[nd].Add(1)
			go l.read(nd, c, i*len(paths)/haReadersPerNode)
		}
	}
	if rotate {
		l.rotWG.Add(1)
		go l.rotate(clients(15 * time.Second))
	}
	l.pollWG.Add(1)
	go l.poll(clients(2 * time.Second))
	return l
}

// read reads the tokens through nd with c in turn, from the one at first,
// until nd's readers are stopped.
func (l *haLoad) read(nd *clusterNode, c *api.Client, first int) {
	defer l.readers[nd].Done()
	for i := first; ; i++ {
		select {
		case <-l.readerEnd[nd]:
			return
		case <-time.After(haReadPause):
		}
		start := time.Now()
		s, err := c.Logical().Read(l.paths[i%len(l.paths)])
		if err == nil && (s == nil || s.Data["token"] == nil) {
			err = errors.New("no token in the answer (a redirect to the active node?)")
		}
		l.mu.Lock()
		l.reads = append(l.reads, haRead{node: nd, path: l.paths[i%len(l.paths)], start: start, end: time.Now(), err: err})
		l.mu.Unlock()
	}
}

// rotate forces rotations through the live nodes in turn until stopped.
func (l *haLoad) rotate(clients map[*clusterNode]*api.Client) {
	defer l.rotWG.Done()
	for i := 0; ; i++ {
		select {
		case <-l.rotator:
			return
		case <-time.After(haRotatePause):
		}
		alive := l.cl.alive()
		nd := alive[i%len(alive)]
		start := time.Now()
		err := rotateOnce(clients[nd])
		l.mu.Lock()
		l.rotates = append(l.rotates, haRotation{node: nd, start: start, end: time.Now(), err: err})
		l.mu.Unlock()
	}
}

// poll asks every live node who is active, until stopped, and records the
// answers in which a node says it is.
func (l *haLoad) poll(clients map[*clusterNode]*api.Client) {
	defer l.pollWG.Done()
	for {
		select {
		case <-l.poller:
			return
		case <-time.After(200 * time.Millisecond):
		}
		for _, nd := range l.cl.alive() {
			start := time.Now()
			r, err := clients[nd].Sys().Leader()
			if err == nil && r.IsSelf {
				l.mu.Lock()
				l.leaders = append(l.leaders, haLeaderSeen{node: nd, start: start, end: time.Now()})
				l.mu.Unlock()
			}
		}
	}
}

// waitRotations waits until n rotations forced by the rotator and sent
// after after have succeeded, and returns when the last was sent.
func (l *haLoad) waitRotations(t *testing.T, after time.Time, n int, limit time.Duration) time.Time {
	t.Helper()
	var at time.Time
	if err := waitFor(limit, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		got := 0
		for _, r := range l.rotates {
			if r.err == nil && r.start.After(after) {
				if got++; got == n {
					at = r.start
					return nil
				}
			}
		}
		return fmt.Errorf("%d of %d forced rotations succeeded", got, n)
	}); err != nil {
		t.Fatalf("%v within %v", err, limit)
	}
	return at
}

// lastRotation is when the last successful forced rotation was answered.
func (l *haLoad) lastRotation() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var at time.Time
	for _, r := range l.rotates {
		if r.err == nil {
			at = r.end
		}
	}
	return at
}

// window records a failover window: from the failover until reads through
// every surviving node succeeded again.
func (l *haLoad) window(from, to time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.windows = append(l.windows, [2]time.Time{from, to})
}

// inWindow reports whether a request from start to end was under way
// during a failover window.
func (l *haLoad) inWindow(start, end time.Time) bool {
	for _, w := range l.windows {
		if !end.Before(w[0]) && !start.After(w[1]) {
			return true
		}
	}
	return false
}

func (l *haLoad) stopRotator() {
	select {
	case <-l.rotator:
	default:
		close(l.rotator)
	}
	l.rotWG.Wait()
}

// stopReaders stops the readers of nd and waits for them.
func (l *haLoad) stopReaders(nd *clusterNode) {
	select {
	case <-l.readerEnd[nd]:
	default:
		close(l.readerEnd[nd])
	}
	l.readers[nd].Wait()
}

func (l *haLoad) stopAll() {
	l.stopOnce.Do(func() {
		l.stopRotator()
		for _, nd := range l.cl.nodes {
			l.stopReaders(nd)
		}
		close(l.poller)
		l.pollWG.Wait()
	})
}

// check reports reads and forced rotations that failed outside the failover
// windows (a rotation refused with 429 is the engine's floor, not a
// failure), and logs what the readers saw of each window.
func (l *haLoad) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	bad := 0
	for _, r := range l.reads {
		if r.err != nil && !l.inWindow(r.start, r.end) {
			if bad++; bad <= 10 {
				t.Errorf("read of %s through %s at %s failed outside a failover window: %v", r.path, r.node.id, r.start.Format("15:04:05.000"), r.err)
			}
		}
	}
	for _, r := range l.rotates {
		if r.err != nil && statusCode(r.err) != http.StatusTooManyRequests && !l.inWindow(r.start, r.end) {
			if bad++; bad <= 10 {
				t.Errorf("forced rotation through %s at %s failed outside a failover window: %v", r.node.id, r.start.Format("15:04:05.000"), r.err)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d failures outside the failover windows in all", bad)
	}
	for i, w := range l.windows {
		for _, nd := range l.cl.nodes {
			var n int
			var first, last time.Time
			var lastErr error
			for _, r := range l.reads {
				if r.node == nd && r.err != nil && !r.end.Before(w[0]) && !r.start.After(w[1]) {
					if n == 0 {
						first = r.start
					}
					n++
					last, lastErr = r.end, r.err
				}
			}
			if n > 0 {
				t.Logf("failover %d: %d reads through %s failed from +%v to +%v (last: %v)", i+1, n, nd.id,
					first.Sub(w[0]).Round(time.Millisecond), last.Sub(w[0]).Round(time.Millisecond), lastErr)
			}
		}
		var tried, done, refused int
		var failed error
		for _, r := range l.rotates {
			if !r.end.Before(w[0]) && !r.start.After(w[1]) {
				tried++
				switch {
				case r.err == nil:
					done++
				case statusCode(r.err) == http.StatusTooManyRequests:
					refused++
				default:
					failed = r.err
				}
			}
		}
		if tried > 0 {
			t.Logf("failover %d: %d forced rotations under way, %d succeeded, %d refused (429), %d failed (last: %v)",
				i+1, tried, done, refused, tried-done-refused, failed)
		}
	}
}

func (l *haLoad) leaderObservations() []haLeaderSeen {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]haLeaderSeen(nil), l.leaders...)
}

// rotations counts the forced rotations that succeeded.
func (l *haLoad) rotations() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.rotates {
		if r.err == nil {
			n++
		}
	}
	return n
}

func (l *haLoad) refused() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.rotates {
		if statusCode(r.err) == http.StatusTooManyRequests {
			n++
		}
	}
	return n
}

func (l *haLoad) readCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reads)
}

// checkOnlyActiveCalled checks that every call to Teletracker a node logged
// was made while that node was active, by its own log: after it logged
// "acquired lock, enabling active operation" and before it logged
// "pre-seal teardown complete" (or was killed). The plugin's own timestamp
// of the line is used, not the time Vault forwarded it, and Vault logs the
// start of active duty before any mount is set up and the end after every
// mount is torn down, so the check never blames a node for a late line. It
// is made meaningful by two cross-checks: every sys/leader answer in which a
// node said it was active falls in one of its active periods (so the periods
// are read right), and the calls logged are exactly the calls the fake
// received (so none is missed). failovers is how many the test made.
func (cl *raftCluster) checkOnlyActiveCalled(t *testing.T, f *fake, seen []haLeaderSeen, failovers int) {
	t.Helper()
	var logins, refreshes, periods int
	for _, nd := range cl.nodes {
		act, calls, err := parseHALog(nd.v.output(), nd.killed)
		if err != nil {
			t.Errorf("%s log: %v", nd.id, err)
			continue
		}
		periods += len(act)
		var desc []string
		for _, a := range act {
			end := "still active"
			if !a.to.IsZero() {
				end = a.to.Format("15:04:05.000")
			}
			desc = append(desc, a.from.Format("15:04:05.000")+"-"+end)
		}
		t.Logf("%s: active %s; %d calls to Teletracker", nd.id, strings.Join(desc, ", "), len(calls))
		for _, c := range calls {
			if !haActiveAt(act, c.at) {
				t.Errorf("%s called Teletracker (%s) at %s while it was a standby", nd.id, c.op, c.at.Format("15:04:05.000"))
			}
			if c.refresh {
				refreshes++
			} else {
				logins++
			}
		}
		for _, s := range seen {
			if s.node == nd && !haOverlaps(act, s.start, s.end) {
				t.Errorf("%s said it was active between %s and %s, but its log shows no active period then: the log is not read right",
					nd.id, s.start.Format("15:04:05.000"), s.end.Format("15:04:05.000"))
			}
		}
	}
	if periods < failovers+1 {
		t.Errorf("%d active periods in the logs, want at least %d (the first active node and one per failover)", periods, failovers+1)
	}
	if st := f.stats(t); int64(logins) != st.LoginCalls || int64(refreshes) != st.RefreshCalls {
		t.Errorf("the nodes logged %d logins and %d refreshes, the fake received %d and %d: the logs do not account for every call",
			logins, refreshes, st.LoginCalls, st.RefreshCalls)
	}
}

// haPeriod is a time a node was active; to is zero while it still is.
type haPeriod struct{ from, to time.Time }

// haCall is one call to Teletracker a node logged.
type haCall struct {
	at      time.Time
	op      string // the op the line names
	refresh bool   // a /auth/refresh call, else a login
}

var (
	haLineTime   = regexp.MustCompile(`^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d{4}))\s`)
	haPluginTime = regexp.MustCompile(`\btimestamp=(\S+)`)
	haCallOp     = regexp.MustCompile(`\bop="?([^" ]+(?: write)?)"?`)
)

const haTimeLayout = "2006-01-02T15:04:05.000Z0700"

// parseHALog reads a node's log: when it was active, and when it called
// Teletracker. killed, when not zero, ends a period still open.
func parseHALog(out string, killed time.Time) ([]haPeriod, []haCall, error) {
	var act []haPeriod
	var calls []haCall
	open := false
	for _, line := range strings.Split(out, "\n") {
		m := haLineTime.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, err := time.Parse(haTimeLayout, m[1])
		if err != nil {
			return nil, nil, fmt.Errorf("time in %q: %v", line, err)
		}
		switch {
		case strings.Contains(line, "core: acquired lock, enabling active operation"):
			if open {
				return nil, nil, fmt.Errorf("active again at %s without a teardown before", m[1])
			}
			act = append(act, haPeriod{from: at})
			open = true
		case strings.Contains(line, "core: pre-seal teardown complete"):
			if open {
				act[len(act)-1].to = at
				open = false
			}
		case strings.Contains(line, ": calling teletracker:"):
			if p := haPluginTime.FindStringSubmatch(line); p != nil {
				if at, err = time.Parse(haTimeLayout, p[1]); err != nil {
					return nil, nil, fmt.Errorf("plugin time in %q: %v", line, err)
				}
			}
			op := "?"
			if o := haCallOp.FindStringSubmatch(line); o != nil {
				op = o[1]
			}
			calls = append(calls, haCall{at: at, op: op, refresh: op == "/auth/refresh" || strings.Contains(line, " seed=true")})
		}
	}
	if open && !killed.IsZero() {
		act[len(act)-1].to = killed
	}
	return act, calls, nil
}

// haActiveAt reports whether at falls in one of the periods (ends included).
func haActiveAt(act []haPeriod, at time.Time) bool {
	return haOverlaps(act, at, at)
}

// haOverlaps reports whether [from, to] meets one of the periods.
func haOverlaps(act []haPeriod, from, to time.Time) bool {
	for _, a := range act {
		if !to.Before(a.from) && (a.to.IsZero() || !from.After(a.to)) {
			return true
		}
	}
	return false
}

// TestHALogCheck: the log reading behind TestHAFailover's "only the active
// node called Teletracker" finds active periods and calls as Vault and the
// plugin write them, judges a call by the plugin's own time, and catches a
// call made while standby.
func TestHALogCheck(t *testing.T) {
	defaultAccountOnly(t, "the log reading alone, without Vault or an account")
	const log = `==> Vault server started! Log data will stream in below:
2026-01-02T10:00:00.000Z [INFO]  core: post-unseal setup complete
2026-01-02T10:00:00.100Z [INFO]  core: pre-seal teardown complete
2026-01-02T10:00:01.000Z [INFO]  core: acquired lock, enabling active operation
2026-01-02T10:00:02.000Z [DEBUG] secrets.teletracker.teletracker_1.teletracker.vault-plugin-secrets-teletracker: calling teletracker: seed=false op="config write" timestamp=2026-01-02T10:00:02.000Z
2026-01-02T10:00:05.000Z [WARN]  core: stepping down from active operation to standby
2026-01-02T10:00:05.500Z [INFO]  core: pre-seal teardown complete
2026-01-02T10:00:05.600Z [DEBUG] secrets.teletracker.teletracker_1.teletracker.vault-plugin-secrets-teletracker: calling teletracker: op=/auth/refresh generation=1 timestamp=2026-01-02T10:00:04.900Z
2026-01-02T10:00:07.000Z [DEBUG] secrets.teletracker.teletracker_1.teletracker.vault-plugin-secrets-teletracker: calling teletracker: op=/auth/refresh generation=2 timestamp=2026-01-02T10:00:07.000Z
2026-01-02T10:00:09.000Z [INFO]  core: acquired lock, enabling active operation
2026-01-02T10:00:09.500Z [DEBUG] secrets.teletracker.teletracker_1.teletracker.vault-plugin-secrets-teletracker: calling teletracker: seed=true op="config write" timestamp=2026-01-02T10:00:09.500Z
`
	at := func(s string) time.Time {
		v, err := time.Parse(haTimeLayout, "2026-01-02T10:00:"+s+"Z")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	killed := at("10.000")
	act, calls, err := parseHALog(log, killed)
	if err != nil {
		t.Fatal(err)
	}
	want := []haPeriod{{at("01.000"), at("05.500")}, {at("09.000"), killed}}
	if len(act) != len(want) || act[0] != want[0] || act[1] != want[1] {
		t.Fatalf("periods %v, want %v", act, want)
	}
	wantCalls := []struct {
		at      time.Time
		refresh bool
		active  bool
	}{
		{at("02.000"), false, true},
		{at("04.900"), true, true}, // logged by Vault after the teardown, sent before it
		{at("07.000"), true, false},
		{at("09.500"), true, true},
	}
	if len(calls) != len(wantCalls) {
		t.Fatalf("calls %v, want %d", calls, len(wantCalls))
	}
	for i, w := range wantCalls {
		if !calls[i].at.Equal(w.at) || calls[i].refresh != w.refresh || haActiveAt(act, calls[i].at) != w.active {
			t.Errorf("call %d: %+v (active %t), want at %v refresh %t active %t", i, calls[i], haActiveAt(act, calls[i].at), w.at, w.refresh, w.active)
		}
	}
	if _, _, err := parseHALog("2026-01-02T10:00:01.000Z [INFO]  core: acquired lock, enabling active operation\n"+
		"2026-01-02T10:00:02.000Z [INFO]  core: acquired lock, enabling active operation\n", time.Time{}); err == nil {
		t.Error("a second period without a teardown between was accepted")
	}
}
