package teletracker

// sim_test.go is the engine's deterministic simulation (issue 16, "Find the
// next seams before a reviewer does"): two or three nodes, one of them
// active, over one shared storage, each with the real engine code; the fake
// Teletracker in process (process.roundTripper); one virtual clock that only
// the simulation and the engine's sleeps move. A seed makes a schedule of
// everything that can happen (sim_world_test.go holds the world it happens
// to), and the invariants are checked after every step. A failure prints its
// seed and a shortened schedule that replays it:
//
//	go test -race -count=1 -run '^TestSim$' . -sim.seed=N -sim.steps=3,17,40
//
// make unit runs -sim.seeds seeds (225, about a minute under -race on two
// cores), the same ones on every machine; make sim runs for SIM_DURATION
// (-sim.duration) from a seed of the clock.
//
// What it finds when a fix of issue 16 is reverted (in a copy, never
// committed; found with -sim.duration=20s, no -race, seeds from 1):
//
//	defect                                        found  seed  steps              invariant
//	1 2xx with a refresh token, success not true  yes    2     51,53,54,64        reuse
//	2 no send later than the marker's window      yes    1     214,215            floor (the paused node sends
//	                                                                              after the one that took over)
//	3 valid token withheld (served until -1 min)  yes    1     4,28,30,31,33,34,36 withheld
//	4 refresh token's margin uncapped: a storm    yes    31    148…217 (16 steps) storm
//	5 a call Clean stopped counts as a failure    yes    1     139,144            failure-without-cause
//	6 login timeout speaks of a refresh_token     yes    2     157,158,193        untrue-words
//	7 failed call: degraded, no next attempt      yes    2     51,53,54           degraded-without-attempt
//	8 no marker before the engine's own login     yes    658   33 (-sim.duration=2m) floor (a node paused past its
//	                                                                              HA lock logs in after the one
//	                                                                              that took over logged in, died)
//	9 stored floor from the send, not the answer   yes    1796662950086266752  47,51,72,93,94,95,98  floor (the
//	                                                                              mount reloaded calls 10 s after
//	                                                                              a send the spacing delayed)
//
// Replay one with -sim.seed, -sim.len=300 and -sim.steps (on today's code
// they pass). Each of the other invariants was seen to fail once on a
// build broken for it: secret (a refresh token logged), min-ttl (lasts
// ignoring d), expired-served (served ignoring servedUntil),
// successor-lost (a 503 taken for a lost session).
//
// Known limits the invariants allow (not engine defects, or left): the
// nodes share no monotonic clock, so after a wall-clock jump, or for a
// named account with no config (its waits live in one node's memory,
// account.gone), a call of another node may come within the floor; a
// lost answer may make an account without password need re-authentication.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

var (
	simSeed      = flag.Uint64("sim.seed", 0, "simulation: run this seed only (0: -sim.seeds seeds from 1, or seeds for -sim.duration)")
	simSteps     = flag.String("sim.steps", "", "simulation: with -sim.seed, replay only these steps of its schedule (comma-separated indices)")
	simSeeds     = flag.Int("sim.seeds", 225, "simulation: how many seeds to run, when -sim.duration is 0")
	simDuration  = flag.Duration("sim.duration", 0, "simulation: how long to run seeds for, instead of -sim.seeds")
	simLen       = flag.Int("sim.len", 300, "simulation: steps in each seed's schedule")
	simRandom    = flag.Bool("sim.random", false, "simulation: start from a seed of the clock, not 1")
	simShrinkFor = flag.Duration("sim.shrink", 2*time.Minute, "simulation: the longest a failure's schedule is shortened for")
	simLog       = flag.Bool("sim.log", false, "simulation: with -sim.seed, print the steps and the engine's log")
)

// simFailover is how long a standby takes to take over from an active node
// that died: its HA lock's time to live (15 s with Raft and Consul). A call
// the dead node made leaves no trace to keep the floor by, but this.
const simFailover = 15 * time.Second

// simParams are what a seed chooses for its whole run.
type simParams struct {
	nodes                          int
	tokenLifetime, refreshLifetime time.Duration
	margin, timeout                time.Duration
}

// simStep is one thing that happens.
type simStep struct {
	kind    string
	node    int           // the node it happens on, where it matters
	account int           // the account, an index of simAccounts
	d       time.Duration // how long, how far, min_ttl
	n       int           // which variant
}

func (s simStep) String() string {
	return fmt.Sprintf("%s(node=%d account=%q d=%s n=%d)", s.kind, s.node, simAccounts[s.account].name, s.d, s.n)
}

// The variants of config writes and upstream faults.
var (
	// (A kind named twice is chosen twice as often: the credentials that
	// mend an account more often than what breaks it for good.)
	simConfigKinds = []string{"margin", "timeout", "password", "password", "password", "wrong-password",
		"seed", "seed", "seed", "spent-seed", "delete", "read"}
	simUpKinds = []string{"503", "503", "503", "429", "429", "429-retry-after", "429-retry-after", "hang", "hang",
		"lost", "crash", "no-success", "no-success", "success-string", "incomplete", "401"}
)

// simSchedule is seed's parameters and schedule of n steps.
func simSchedule(seed uint64, n int) (simParams, []simStep) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	pick := func(ds ...time.Duration) time.Duration { return ds[rng.IntN(len(ds))] }
	p := simParams{
		nodes:           2 + rng.IntN(2),
		tokenLifetime:   pick(2*time.Minute, 5*time.Minute, time.Hour),
		refreshLifetime: pick(11*time.Minute, 2*time.Hour, 30*24*time.Hour),
		margin:          pick(time.Second, 40*time.Second, 10*time.Minute),
		timeout:         pick(5*time.Second, 10*time.Second, 30*time.Second),
	}
	steps := make([]simStep, n)
	for i := range steps {
		s := simStep{node: rng.IntN(p.nodes), account: rng.IntN(len(simAccounts))}
		switch x := rng.IntN(100); {
		case x < 22:
			s.kind, s.d = "tick", pick(0, 0, 0, 20*time.Second, 2*time.Minute)
		case x < 32:
			s.kind, s.d = "pass", time.Duration(1+rng.IntN(90))*time.Second
		case x < 50:
			s.kind = "read"
			if rng.IntN(3) == 0 {
				s.d = pick(30*time.Second, 2*time.Minute, 40*time.Minute, 2*time.Hour)
			}
		case x < 54:
			s.kind = "rotate"
		case x < 58:
			s.kind = "status"
		case x < 65:
			s.kind, s.n = "config", rng.IntN(len(simConfigKinds))
		case x < 74:
			s.kind, s.n = "upstream", rng.IntN(len(simUpKinds))
			s.d = time.Duration(1+rng.IntN(120)) * time.Second // a Retry-After
		case x < 81:
			s.kind, s.n = "storage", rng.IntN(6)
			s.d = time.Duration(1+rng.IntN(60)) * time.Second
		case x < 86:
			s.kind = "invalidate"
		case x < 89:
			s.kind = "clean"
		case x < 92:
			s.kind = "stepdown"
		case x < 94:
			s.kind = "crash"
		case x < 99:
			s.kind = "jump"
			s.d = pick(-10*time.Minute, -90*time.Second, -3*time.Second, 3*time.Second, 90*time.Second, 10*time.Minute, 3*time.Hour)
		default:
			s.kind = "revoke"
		}
		steps[i] = s
	}
	return p, steps
}

// simRun is one run of steps, the schedule of a seed or a part of it.
type simRun struct {
	*simWorld
	p simParams
	// lastTick is when (mono) the nodes last ticked.
	lastTick time.Time
	// logSeen is how much of the log has been checked for secrets.
	logSeen, textSeen int
	// failures are each account's consecutive failures after the last step.
	failures map[string]int
	// refreshSent says a refresh was sent in the current step.
	callsBefore int
}

// runSim runs steps of seed and returns the first invariant broken, if any.
func runSim(seed uint64, p simParams, steps []simStep, logs ...func(string)) (err error) {
	r := &simRun{simWorld: newSimWorld(seed, p.nodes, p), p: p, failures: map[string]int{}}
	defer func() {
		for _, f := range logs {
			f(r.logs.String())
		}
		for _, n := range r.nodes {
			if n.b != nil {
				n.b.Cleanup(context.Background())
			}
		}
		if v := recover(); v != nil {
			err = fmt.Errorf("step %d: panic: %v\n%s", r.step, v, debug.Stack())
		}
	}()
	r.setup()
	if r.violation != nil {
		return r.violation
	}
	for i, s := range steps {
		r.step = i
		if *simLog {
			fmt.Fprintf(r.logs, "=== step %d at %s (mono +%s): %s\n", i, r.clock.Now().Format(time.TimeOnly), r.clock.Mono().Sub(testStart), s)
		}
		r.do(s)
		r.check()
		if r.violation != nil {
			return r.violation
		}
	}
	return nil
}

// setup configures both accounts: the default one with a password, the
// named one with a refresh token alone.
func (r *simRun) setup() {
	seed, _ := r.fake.NewSession("fleet")
	r.owner[seed] = "fleet"
	r.write(0, map[string]any{"base_url": "http://127.0.0.1:1", "username": "demo", "password": "demo-password",
		"refresh_margin": int(r.p.margin.Seconds()), "request_timeout": int(r.p.timeout.Seconds())})
	r.write(1, map[string]any{"base_url": "http://127.0.0.1:1", "refresh_token": seed,
		"refresh_margin": int(r.p.margin.Seconds()), "request_timeout": int(r.p.timeout.Seconds())})
	r.lastTick = r.clock.Mono()
}

// path is account's path for the default account's path p.
func simPath(account int, p string) string {
	name := simAccounts[account].name
	switch {
	case name == "":
		return p
	case p == "config":
		return accountsPrefix + name
	}
	return p + "/" + name
}

// request sends a request to node as Vault would: a standby that cannot
// write forwards it to the active node. Every error and warning is kept,
// to be checked for secrets.
func (r *simRun) request(node int, op logical.Operation, path string, data map[string]any) (*logical.Response, error, bool) {
	n := r.nodes[node]
	if op != logical.ReadOperation {
		n = r.nodes[r.active]
	}
	resp, err := n.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: n.view})
	forwarded := false
	if errors.Is(err, logical.ErrReadOnly) && n != r.nodes[r.active] && r.nodes[r.active].b != nil {
		n, forwarded = r.nodes[r.active], true
		resp, err = n.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: n.view})
	}
	if err != nil {
		r.texts = append(r.texts, err.Error())
	}
	if resp != nil {
		r.texts = append(r.texts, resp.Warnings...)
		if resp.IsError() {
			r.texts = append(r.texts, resp.Error().Error())
		}
		if e, ok := resp.Data["last_error"].(string); ok {
			r.texts = append(r.texts, e)
		}
	}
	return resp, err, n == r.nodes[r.active] || forwarded
}

// write writes account's config with data.
func (r *simRun) write(account int, data map[string]any) (*logical.Response, error) {
	resp, err, _ := r.request(r.active, logical.UpdateOperation, simPath(account, "config"), data)
	return resp, err
}

// do runs step s.
func (r *simRun) do(s simStep) {
	r.faulted = false
	r.callsBefore = len(r.calls)
	for _, a := range simAccounts {
		r.noConfig[a.name] = r.unconfigured(a.name)
	}
	name := simAccounts[s.account].name
	node := s.node % len(r.nodes)
	switch s.kind {
	case "tick":
		// Vault ticks each node once a minute; d makes it late.
		if wait := r.lastTick.Add(tickInterval + s.d).Sub(r.clock.Mono()); wait > 0 {
			r.clock.Add(wait)
		}
		r.lastTick = r.clock.Mono()
		for _, n := range r.nodes {
			if n.b != nil {
				if err := n.b.periodicFunc(context.Background(), &logical.Request{Storage: n.view}); err != nil {
					r.texts = append(r.texts, err.Error())
				}
			}
		}
	case "pass":
		r.clock.Add(s.d)
	case "read":
		r.read(node, s.account, s.d)
	case "rotate":
		r.busy[name] = r.clock.Mono()
		r.request(r.active, logical.UpdateOperation, simPath(s.account, "rotate"), nil)
	case "status":
		r.request(node, logical.ReadOperation, simPath(s.account, "status"), nil)
	case "config":
		r.config(s)
	case "upstream":
		r.upFaults = append(r.upFaults, simUpFault(simUpKinds[s.n], s.d))
	case "storage":
		op := []string{"get", "put", "delete", "put", "put", "put"}[s.n]
		f := storageFault{op: op, fail: s.n < 3}
		switch s.n {
		case 3:
			f.slow = s.d
		case 4:
			f.slow, f.takeover = r.p.timeout+sendWindow+minCallInterval+s.d, true
		case 5:
			f.op, f.clean = "put", true
		}
		r.storageFaults = append(r.storageFaults, f)
	case "invalidate":
		n := r.nodes[node]
		for _, key := range n.pending {
			n.b.invalidate(context.Background(), key)
		}
		n.pending = nil
	case "clean":
		r.markBusy()
		n := r.nodes[node]
		r.stop(n, true)
		r.start(n)
	case "stepdown":
		r.markBusy()
		r.clock.Add(time.Duration(1+node) * time.Second)
		r.takeover(node, false)
	case "crash":
		r.markBusy()
		r.clock.Add(simFailover)
		r.takeover(node, true)
	case "jump":
		r.markBusy()
		r.clock.jump(s.d)
		r.jumpedAt = r.clock.Mono()
	case "revoke":
		r.fake.RevokeAll()
		r.revokes++
		r.markBusy()
		for _, a := range simAccounts {
			r.excused[a.name] = "Teletracker revoked every session"
		}
	}
	r.afterStep()
}

// afterStep settles what a step left: a node paused by a takeover or
// killed during a call is replaced, a node whose Clean began is reloaded.
func (r *simRun) afterStep() {
	if r.paused != nil {
		n := r.paused
		r.paused = nil
		r.stop(n, true)
		n.sys.standby.Store(true)
		r.start(n)
	}
	for i, n := range r.nodes {
		switch {
		case n.b != nil && n.view.dead.Load() && i == r.active:
			r.markBusy()
			r.clock.Add(simFailover)
			r.takeover(i+1, true)
		case n.b != nil && n.view.dead.Load():
			r.stop(n, false)
			r.start(n)
		case n.b != nil && n.b.life.Err() != nil:
			r.stop(n, true)
			r.start(n)
		}
	}
}

// simUpFault is the upstream fault kind, with retryAfter for a 429.
func simUpFault(kind string, retryAfter time.Duration) upFault {
	f := upFault{kind: kind}
	switch kind {
	case "503":
		f.fake.Status = http.StatusServiceUnavailable
	case "429":
		f.fake.Status = http.StatusTooManyRequests
	case "429-retry-after":
		f.fake.Status, f.fake.RetryAfter = http.StatusTooManyRequests, strconv.Itoa(int(retryAfter.Seconds()))
	case "no-success":
		f.fake.Omit = []string{"success"}
	case "success-string":
		f.fake.Success = "true"
	case "incomplete":
		f.fake.Omit = []string{"token"}
	case "401":
		f.fake.Status = http.StatusUnauthorized
	}
	return f
}

// config writes (or reads, or deletes) an account's config as s says.
func (r *simRun) config(s simStep) {
	name := simAccounts[s.account].name
	r.busy[name] = r.clock.Mono()
	path := simPath(s.account, "config")
	switch kind := simConfigKinds[s.n]; kind {
	case "margin":
		r.write(s.account, map[string]any{"refresh_margin": int(r.p.margin.Seconds())})
	case "timeout":
		r.write(s.account, map[string]any{"request_timeout": int(r.p.timeout.Seconds())})
	case "password", "wrong-password":
		pw := simUsers[simAccounts[s.account].user]
		if kind == "wrong-password" {
			pw = "wrong-password"
		}
		r.credential(s.account, map[string]any{"base_url": "http://127.0.0.1:1", "username": simAccounts[s.account].user, "password": pw})
	case "seed", "spent-seed":
		seed, _ := r.fake.NewSession(simAccounts[s.account].user)
		if kind == "spent-seed" {
			seed = simBogus(s.account)
		}
		r.owner[seed] = name
		r.credential(s.account, map[string]any{"base_url": "http://127.0.0.1:1", "refresh_token": seed})
	case "delete":
		r.request(r.active, logical.DeleteOperation, path, nil)
	case "read":
		r.request(s.node%len(r.nodes), logical.ReadOperation, path, nil)
	}
}

// simBogus is a refresh token Teletracker never issued, for account.
func simBogus(account int) string {
	return fmt.Sprintf("never-issued-refresh-token-%d", account)
}

// credential writes a credential and checks what the answer says of it:
// that a refresh_token may be spent only when one was sent.
func (r *simRun) credential(account int, data map[string]any) {
	if _, ok := data["username"]; ok {
		// A named account's first write needs the refresh margin and
		// timeout of the run too.
		data["refresh_margin"], data["request_timeout"] = int(r.p.margin.Seconds()), int(r.p.timeout.Seconds())
	}
	refreshesBefore := r.refreshes
	resp, err := r.write(account, data)
	text := ""
	if err != nil {
		text = err.Error()
	}
	if resp != nil && resp.IsError() {
		text += resp.Error().Error()
	}
	if strings.Contains(text, "refresh_token sent may be spent") && r.refreshes == refreshesBefore {
		r.fail("untrue-words", "a config write that sent no refresh token says %q", text)
	}
	if st := r.stored(account); (err == nil && resp != nil && !resp.IsError()) && st != nil && st.State == stateReady {
		delete(r.excused, simAccounts[account].name) // a new credential that works
	}
}

// read reads account's token on node, with min_ttl when minTTL is not 0,
// and checks the answer: a token served is live, and lasts min_ttl; a
// read refused while a token Teletracker accepts has more than serveGuard
// left is a token withheld.
func (r *simRun) read(node, account int, minTTL time.Duration) {
	var data map[string]any
	if minTTL > 0 {
		data = map[string]any{"min_ttl": int(minTTL.Seconds())}
		r.busy[simAccounts[account].name] = r.clock.Mono()
	}
	resp, err, active := r.request(node, logical.ReadOperation, simPath(account, "token"), data)
	now := r.clock.Now()
	if err == nil && resp != nil && !resp.IsError() {
		token, _ := resp.Data["token"].(string)
		exp, perr := time.Parse(time.RFC3339, fmt.Sprint(resp.Data["expires_at"]))
		switch {
		case !r.fake.Live(token) && r.issued[token] == r.revokes: // a revoked session's are served unknowing
			r.fail("expired-served", "account %q: an expired (or revoked, or unknown) token was served; expires_at %v, now %v", simAccounts[account].name, resp.Data["expires_at"], now)
		case perr != nil || !exp.After(now):
			r.fail("expired-served", "account %q: a token served with expires_at %v at %v", simAccounts[account].name, resp.Data["expires_at"], now)
		case minTTL > 0 && exp.Sub(now) < minTTL-time.Second:
			r.fail("min-ttl", "account %q: a token with %s left served to a read with min_ttl %s", simAccounts[account].name, exp.Sub(now), minTTL)
		}
		return
	}
	if minTTL > 0 || !active || r.faulted || r.nodes[r.active].b == nil {
		return
	}
	// The token this node holds: its held record, else the stored one.
	rec := r.nodes[r.active].b.account(simAccounts[account].name).held.Load()
	if rec == nil {
		rec = r.stored(account)
	}
	if rec == nil || rec.Token == "" || !r.fake.Live(rec.Token) {
		return
	}
	tl := rec.timeline()
	if left := tl.expires.Sub(now); left > serveGuard+time.Second && !tl.unknownAge(now) && tl.obtained.Before(now.Add(time.Second)) {
		r.fail("withheld", "account %q: a token Teletracker accepts, %s before it expires, was withheld: %v %v", simAccounts[account].name, left, err, resp)
	}
}

// stored is account's record in the shared storage, nil when none.
func (r *simRun) stored(account int) *record {
	rec, _, err := getRecord(context.Background(), r.mem, accountKey(simAccounts[account].name))
	if err != nil {
		return nil
	}
	return rec
}

// check tests the invariants kept after each step (the calls' own are
// checked as they are made, in simUpstream).
func (r *simRun) check() {
	now := r.clock.Now()
	for i, a := range simAccounts {
		rec := r.stored(i)
		if rec == nil || !rec.configured() {
			r.failures[a.name] = 0
			continue
		}
		// No successor lost: reauth only for what an operator must mend.
		if rec.needsReauth() && r.excused[a.name] == "" {
			r.fail("successor-lost", "account %q needs re-authentication, but Teletracker ended no session, refused no password, and no answer was lost: %s", a.name, rec.LastError)
		}
		if rec.State == stateReady && rec.Token != "" && r.fake.Live(rec.Token) {
			delete(r.excused, a.name)
		}
		// No failure without a cause: a call that failed, or storage.
		caused := r.faulted || slices.ContainsFunc(r.calls[r.callsBefore:], func(c simCall) bool { return c.account == a.name })
		if rec.Failures > r.failures[a.name] && !caused {
			r.fail("failure-without-cause", "account %q: consecutive failures went from %d to %d though nothing failed: %s", a.name, r.failures[a.name], rec.Failures, rec.LastError)
		}
		r.failures[a.name] = rec.Failures
		// Degraded means a call is wanted and will be made: next_attempt_at.
		if act := r.nodes[r.active]; act.b != nil && act.b.life.Err() == nil {
			resp, err, _ := r.request(r.active, logical.ReadOperation, simPath(i, "status"), nil)
			if err == nil && resp != nil && resp.Data["state"] == stateDegraded {
				next, perr := time.Parse(time.RFC3339, fmt.Sprint(resp.Data["next_attempt_at"]))
				if perr != nil || next.Before(now.Add(-time.Second)) {
					r.fail("degraded-without-attempt", "account %q is degraded with next_attempt_at %q at %s: %v", a.name, resp.Data["next_attempt_at"], now.Format(time.RFC3339), resp.Data["last_error"])
				}
			}
		}
	}
	r.checkStorm()
	r.checkSecrets()
}

// checkStorm fails when an account's successful call came sooner after
// the one before than a quarter of the shorter lifetime less a tick, with
// nothing in between (an operator, a fault, a failover, a clock jump) to
// ask for it.
func (r *simRun) checkStorm() {
	// The timeline replaces a token no sooner than a quarter of its
	// lifetime less a tick (half the lifetime as margin, half the margin as
	// spread), and renews a refresh token no sooner than half its lifetime
	// less a tick: a quarter of either, less a tick, is well within that.
	least := min(r.p.tokenLifetime, r.p.refreshLifetime)/4 - tickInterval
	for _, a := range simAccounts {
		last, before := r.lastGood[a.name], r.prevGood[a.name]
		if !before.IsZero() && last.Sub(before) < least && r.busy[a.name].Before(before) && r.callsBefore < len(r.calls) && !r.faulted {
			r.fail("storm", "account %q: a call %s after the one before, with nothing to ask for it (tokens of %s, refresh tokens of %s, margin %s)",
				a.name, last.Sub(before), r.p.tokenLifetime, r.p.refreshLifetime, r.p.margin)
		}
	}
}

// checkSecrets fails when a token, refresh token, guid or password reached
// a log line or an answer's error, warning or last_error.
func (r *simRun) checkSecrets() {
	logs := r.logs.String()
	fresh := logs[r.logSeen:] + "\n" + strings.Join(r.texts[r.textSeen:], "\n")
	r.logSeen, r.textSeen = len(logs), len(r.texts)
	secrets := append(r.fake.IssuedSecrets(), "demo-password", "fleet-password", "wrong-password", simBogus(0), simBogus(1))
	for _, s := range secrets {
		if s != "" && strings.Contains(fresh, s) {
			r.fail("secret", "a secret reached a log line or an answer: %q", s)
			return
		}
	}
}

// TestSim runs the simulation: -sim.seeds seeds from 1 (or from a seed of
// the clock with -sim.random), seeds for -sim.duration when it is set, or
// the one -sim.seed (and only -sim.steps of it, when given).
func TestSim(t *testing.T) {
	if testAccount != "" {
		t.Skip("the simulation drives a named account beside the default one already")
	}
	if *simSeed != 0 {
		p, steps := simSchedule(*simSeed, *simLen)
		if *simSteps != "" {
			steps = simPick(steps, *simSteps)
		}
		err := runSim(*simSeed, p, steps, func(logs string) {
			if *simLog {
				t.Log(logs)
			}
		})
		if err != nil {
			t.Fatalf("seed %d: %v", *simSeed, err)
		}
		return
	}
	first := uint64(1)
	if *simRandom {
		first = uint64(time.Now().UnixNano())
	}
	start, runs := time.Now(), 0
	more := func() bool { return runs < max(*simSeeds, 1) }
	if *simDuration > 0 {
		more = func() bool { return runs == 0 || time.Since(start) < *simDuration }
	}
	for seed := first; more(); seed++ {
		runs++
		p, steps := simSchedule(seed, *simLen)
		if err := runSim(seed, p, steps); err != nil {
			idx := simShrink(seed, p, len(steps), err)
			t.Fatalf("seed %d (%+v) fails: %v\nshortened to %d steps, which fail with: %v\nreplay: go test -race -count=1 -run '^TestSim$' . -sim.seed=%d -sim.len=%d -sim.steps=%s\nthe steps:\n%s",
				seed, p, err, len(idx), runSim(seed, p, simPick(steps, simJoin(idx))), seed, *simLen, simJoin(idx), simDescribe(steps, idx))
		}
	}
	t.Logf("%d seeds, %d steps each, in %s", runs, *simLen, time.Since(start).Round(time.Millisecond))
}

// simShrink drops steps of seed's schedule of n while the run still fails
// with the same invariant (delta debugging, simply): the indices left.
func simShrink(seed uint64, p simParams, n int, failure error) []int {
	_, all := simSchedule(seed, n)
	same := func(err error) bool { return err != nil && simKind(err) == simKind(failure) }
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	// Steps after the failing one are never needed.
	var v *simViolation
	if errors.As(failure, &v) && v.step+1 < len(idx) {
		idx = idx[:v.step+1]
	}
	deadline := time.Now().Add(*simShrinkFor)
	for chunk := len(idx) / 2; chunk >= 1 && time.Now().Before(deadline); chunk /= 2 {
		for i := 0; i+chunk <= len(idx) && time.Now().Before(deadline); {
			try := append(slices.Clone(idx[:i]), idx[i+chunk:]...)
			if same(runSim(seed, p, simPick(all, simJoin(try)))) {
				idx = try
				continue
			}
			i += chunk
		}
	}
	return idx
}

// simKind is the invariant err names ("panic" for a panic).
func simKind(err error) string {
	var v *simViolation
	if errors.As(err, &v) {
		return v.kind
	}
	return "panic"
}

// simPick is the steps of list, a comma-separated list of indices.
func simPick(steps []simStep, list string) []simStep {
	var out []simStep
	for _, f := range strings.Split(list, ",") {
		if i, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && i >= 0 && i < len(steps) {
			out = append(out, steps[i])
		}
	}
	return out
}

func simJoin(idx []int) string {
	parts := make([]string, len(idx))
	for i, x := range idx {
		parts[i] = strconv.Itoa(x)
	}
	return strings.Join(parts, ",")
}

func simDescribe(steps []simStep, idx []int) string {
	var b strings.Builder
	for _, i := range idx {
		fmt.Fprintf(&b, "  %3d %s\n", i, steps[i])
	}
	return b.String()
}
