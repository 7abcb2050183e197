package teletracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// sim_world_test.go is the simulation's world (sim_test.go drives it): the
// nodes, the one storage they share with its faults, the fake Teletracker
// reached in process with its faults, the virtual clock, and what the
// invariants need to know of every call.

// The simulation's one clock is a testClock (backend_test.go): the wall
// clock (Vault's, and the fake's) and its monotonic twin. Time passes only
// when the simulation or a sleep of the engine moves it; a jump moves the
// wall clock alone.

// jump sets the wall clock d forward (or back), as NTP or an operator may.
func (c *testClock) jump(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// sleep is the engine's sleeper on this clock: it lets d pass at once.
func (c *testClock) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Add(d)
	return nil
}

// simSys is a node's view of Vault: its replication state changes when the
// node becomes active or standby.
type simSys struct {
	logical.StaticSystemView
	// standby says the node is a performance standby.
	standby atomic.Bool
}

func (s *simSys) ReplicationState() consts.ReplicationState {
	if s.standby.Load() {
		return consts.ReplicationPerformanceStandby
	}
	return consts.ReplicationPerformancePrimary
}

// simNode is one Vault node; b is the backend Vault made for the mount on
// it (a new one after each restart, reload or change of role).
type simNode struct {
	id int
	// b is the mount's backend on the node; inst names it in reports.
	b    *backend
	inst int
	sys  *simSys
	// view is b's storage: the shared one, as b reaches it.
	view *simView
	// pending are the keys changed by other nodes, not yet invalidated here.
	pending []string
}

// storageFault is a fault for the next storage call of its op.
type storageFault struct {
	op string // "get", "put" or "delete"
	// fail fails the call; else the call is applied and its
	// acknowledgement comes slow later.
	fail bool
	slow time.Duration
	// takeover, with slow: while the acknowledgement is on its way the
	// node is paused, and another node takes over and ticks.
	takeover bool
	// clean, for a Put: the node's Clean begins while it is acknowledged.
	clean bool
}

// upFault is a fault for the next call to Teletracker.
type upFault struct {
	kind string
	// fake is what the fake Teletracker is told, for the kinds it does itself.
	fake fakett.Fault
}

// simCall is one call that reached Teletracker.
type simCall struct {
	account string
	at      time.Time // on the monotonic clock
	inst    int
	op      string
}

// simWorld is everything one run of the simulation holds.
type simWorld struct {
	clock *testClock
	fake  *fakett.Server
	// mem is the storage every node shares.
	mem   *logical.InmemStorage
	nodes []*simNode
	// active is the index of the active node.
	active int
	insts  int
	logs   *syncBuffer
	// texts are every error, warning and status text any node answered.
	texts []string

	// mu guards what the calls and storage of nodes write below.
	mu sync.Mutex
	// storageFaults and upFaults wait for the calls they apply to.
	storageFaults []storageFault
	upFaults      []upFault
	// faulted says a storage fault was applied in the current step.
	faulted bool
	// owner is the account of each refresh token and user.
	owner map[string]string
	// spent are the refresh tokens the fake spent; lost those whose answer
	// (which spent them, or not) never reached the node that sent them.
	spent, lost map[string]bool
	// calls are every call to Teletracker, in order.
	calls []simCall
	// refreshes counts the refresh calls, whoever's.
	refreshes int
	// issued are the bearer tokens issued, with how many revocations of
	// every session came before each; revokes counts them.
	issued  map[string]int
	revokes int
	// noConfig says a named account had no config when the step began.
	noConfig map[string]bool
	// jumpedAt is when (mono) the wall clock last jumped.
	jumpedAt time.Time
	// excused says why an account may need re-authentication, by account.
	excused map[string]string
	// busy is when (mono) an account was last given a reason for a call
	// that is no refresh ahead of need (an operator, a fault, a failover).
	busy map[string]time.Time
	// lastGood and prevGood are when (mono) an account's last two
	// successful calls were sent.
	lastGood, prevGood map[string]time.Time
	// failMu guards violation, the first invariant broken.
	failMu    sync.Mutex
	violation *simViolation
	// now is the step being run, for reports.
	step int
	// paused is a node paused by a takeover while its call goes on.
	paused *simNode
}

// simUsers are the fake's users: the default account's and the named one's.
var simUsers = map[string]string{"demo": "demo-password", "fleet": "fleet-password"}

// simAccounts are the accounts the simulation drives, and their users.
var simAccounts = []struct{ name, user string }{{"", "demo"}, {"fleet", "fleet"}}

// newSimWorld is a world of n nodes for the run seeded seed, node 0 active.
func newSimWorld(seed uint64, n int, p simParams) *simWorld {
	w := &simWorld{
		clock: &testClock{t: testStart, mono: testStart},
		mem:   &logical.InmemStorage{},
		logs:  &syncBuffer{},
		owner: map[string]string{}, spent: map[string]bool{}, lost: map[string]bool{},
		excused: map[string]string{}, issued: map[string]int{}, noConfig: map[string]bool{}, busy: map[string]time.Time{}, lastGood: map[string]time.Time{}, prevGood: map[string]time.Time{},
	}
	w.fake = fakett.New(fakett.Options{
		Users: simUsers, TokenLifetime: p.tokenLifetime, RefreshLifetime: p.refreshLifetime,
		Now: w.clock.Now, Rand: rand.NewChaCha8(seedBytes(seed)),
	})
	for _, a := range simAccounts {
		w.owner["user:"+a.user] = a.name
	}
	for i := range n {
		node := &simNode{id: i, sys: &simSys{StaticSystemView: logical.StaticSystemView{}}}
		node.sys.standby.Store(i != 0)
		w.nodes = append(w.nodes, node)
		w.start(node)
	}
	return w
}

// seedBytes is the ChaCha8 seed of seed.
func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}

// start gives node a new backend over the shared storage, as Vault does
// when it starts, reloads the plugin or changes the node's role; the
// active node's is initialized.
func (w *simWorld) start(node *simNode) {
	w.insts++
	node.inst = w.insts
	node.view = &simView{w: w, node: node, inst: node.inst}
	node.pending = nil
	conf := logical.TestBackendConfig()
	conf.System = node.sys
	conf.StorageView = node.view
	conf.Logger = hclog.New(&hclog.LoggerOptions{Output: w.logs, Level: hclog.Trace, Name: fmt.Sprintf("node%d.%d", node.id, node.inst)})
	p := newProcess(DefaultCallsPerSecond)
	p.roundTripper = &simUpstream{w: w, inst: node.inst, view: node.view}
	b := newBackend(p)
	b.now, b.mono, b.sleep = w.clock.Now, w.clock.Mono, w.clock.sleep
	b.tickWorkers = 1
	b.storage = node.view
	if err := b.Setup(context.Background(), conf); err != nil {
		panic(err) // Setup fails on no input the simulation can make
	}
	node.b = b
	if !node.sys.standby.Load() {
		if err := b.Initialize(context.Background(), &logical.InitializationRequest{Storage: node.view}); err != nil {
			w.texts = append(w.texts, err.Error())
		}
	}
}

// stop ends node's backend: cleanly (Clean) or not at all (a crash).
func (w *simWorld) stop(node *simNode, clean bool) {
	if clean {
		node.b.Cleanup(context.Background())
	}
	node.view.dead.Store(true)
	node.b = nil
}

// takeover makes node to the active one: the old active node's backend is
// stopped (cleanly unless crash), and it comes back as a standby.
func (w *simWorld) takeover(to int, crash bool) {
	old := w.nodes[w.active]
	to %= len(w.nodes)
	if to == w.active {
		to = (to + 1) % len(w.nodes)
	}
	w.stop(old, !crash)
	old.sys.standby.Store(true)
	w.start(old)
	w.active = to
	node := w.nodes[to]
	w.stop(node, true)
	node.sys.standby.Store(false)
	w.start(node)
}

// simViolation is an invariant broken: kind names the invariant.
type simViolation struct {
	step      int
	kind, msg string
}

func (v *simViolation) Error() string {
	return fmt.Sprintf("step %d: %s: %s", v.step, v.kind, v.msg)
}

// fail records the first invariant broken, kind, and how.
func (w *simWorld) fail(kind, format string, args ...any) {
	w.failMu.Lock()
	defer w.failMu.Unlock()
	if w.violation == nil {
		w.violation = &simViolation{step: w.step, kind: kind, msg: fmt.Sprintf(format, args...)}
	}
}

// simView is the shared storage as one backend reaches it: it applies the
// storage faults, tells the other nodes what changed, and, once its
// backend is gone (a crash), fails every call, as a dead process's would.
type simView struct {
	w    *simWorld
	node *simNode
	inst int
	dead atomic.Bool
}

// fault takes the storage fault due for op, if any.
func (v *simView) fault(op string) (storageFault, bool) {
	v.w.mu.Lock()
	defer v.w.mu.Unlock()
	for i, f := range v.w.storageFaults {
		if f.op == op {
			v.w.storageFaults = append(v.w.storageFaults[:i:i], v.w.storageFaults[i+1:]...)
			v.w.faulted = v.w.faulted || f.fail || f.slow > 0
			return f, true
		}
	}
	return storageFault{}, false
}

var errSimDead = errors.New("the node is down")

func (v *simView) List(ctx context.Context, prefix string) ([]string, error) {
	if err := v.check(ctx); err != nil {
		return nil, err
	}
	return v.w.mem.List(ctx, prefix)
}

func (v *simView) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if err := v.check(ctx); err != nil {
		return nil, err
	}
	f, ok := v.fault("get")
	if ok && f.fail {
		return nil, errStorageDown
	}
	e, err := v.w.mem.Get(ctx, key)
	if ok {
		v.w.clock.Add(f.slow)
	}
	return e, err
}

func (v *simView) Put(ctx context.Context, e *logical.StorageEntry) error {
	return v.write(ctx, "put", e.Key, func() error { return v.w.mem.Put(ctx, e) })
}

func (v *simView) Delete(ctx context.Context, key string) error {
	return v.write(ctx, "delete", key, func() error { return v.w.mem.Delete(ctx, key) })
}

// write applies a Put or Delete of key with the fault due, and queues the
// key's invalidation on the other nodes.
func (v *simView) write(ctx context.Context, op, key string, apply func() error) error {
	if err := v.check(ctx); err != nil {
		return err
	}
	f, ok := v.fault(op)
	if ok && f.fail {
		return errStorageDown
	}
	if err := apply(); err != nil {
		return err
	}
	for _, n := range v.w.nodes {
		if n != v.node {
			n.pending = append(n.pending, key)
		}
	}
	if ok && f.clean {
		v.node.b.end() // Clean's first act; the rest comes after the step
	}
	if ok && f.slow > 0 {
		v.w.clock.Add(f.slow)
		if f.takeover && v.w.nodes[v.w.active] == v.node && v.w.paused == nil {
			// This node is paused while its write is acknowledged; another
			// takes over and ticks. This one goes on once it resumes, not
			// knowing it lost its place; it is stopped after the step.
			v.w.paused = v.node
			to := (v.w.active + 1) % len(v.w.nodes)
			node := v.w.nodes[to]
			v.w.stop(node, true)
			node.sys.standby.Store(false)
			v.w.start(node)
			v.w.active = to
			v.w.markBusy()
			_ = node.b.periodicFunc(context.Background(), &logical.Request{Storage: node.view})
		}
	}
	return nil
}

// check fails a call of a dead node's backend, or one whose context is
// done (as Vault's storage does across the plugin's gRPC boundary).
func (v *simView) check(ctx context.Context) error {
	if v.dead.Load() {
		return errSimDead
	}
	return ctx.Err()
}

// unconfigured says account is a named one with no config stored.
func (w *simWorld) unconfigured(account string) bool {
	r, _, err := getRecord(context.Background(), w.mem, accountKey(account))
	return account != "" && err == nil && !r.configured()
}

// markBusy says that every account may be called for a reason other than
// need from now on (a failover, a reload, an operator's act).
func (w *simWorld) markBusy() {
	for _, a := range simAccounts {
		w.busy[a.name] = w.clock.Mono()
	}
}

// simUpstream carries one node's calls to the fake Teletracker in
// process, applying the upstream faults and recording every call.
type simUpstream struct {
	w    *simWorld
	inst int
	view *simView
}

// errSimLost is a connection that broke before the answer came.
var errSimLost = errors.New("connection reset by peer")

func (u *simUpstream) RoundTrip(req *http.Request) (*http.Response, error) {
	w := u.w
	body, _ := io.ReadAll(req.Body)
	form, _ := url.ParseQuery(string(body))
	req.Body = io.NopCloser(bytes.NewReader(body))
	sent := form.Get("refresh_token")

	w.mu.Lock()
	account, known := w.owner[sent]
	if sent == "" {
		account, known = w.owner["user:"+form.Get("username")]
	}
	now := w.clock.Mono()
	if sent != "" {
		w.refreshes++
	}
	if known {
		for i := len(w.calls) - 1; i >= 0; i-- {
			c := w.calls[i]
			if c.account != account {
				continue
			}
			// A wall clock set since the last call lets one call of another
			// node come early: the nodes share no monotonic clock, and a
			// node's own floor holds on its own (a.lastCall).
			// So does a deletion: the waits of a named account with no
			// config stay in the memory of the node that set them alone
			// (account.gone), so a reload or failover forgets them.
			if gap := now.Sub(c.at); gap < minCallInterval && !((!w.jumpedAt.Before(c.at) || w.noConfig[account]) && c.inst != u.inst) {
				w.fail("floor", "account %q called %s after its last call (node instance %d, then %d): within the floor of %s", account, gap, c.inst, u.inst, minCallInterval)
			}
			break
		}
		w.calls = append(w.calls, simCall{account: account, at: now, inst: u.inst, op: req.URL.Path})
	}
	if sent != "" && w.spent[sent] && !w.lost[sent] {
		w.fail("reuse", "account %q: a refresh token Teletracker had spent, and whose answer was received, was sent again (node instance %d)", account, u.inst)
	}
	var f upFault
	faulted := len(w.upFaults) > 0
	if faulted {
		f, w.upFaults = w.upFaults[0], w.upFaults[1:]
		w.busy[account] = now
	}
	w.mu.Unlock()

	if faulted && f.kind == "hang" {
		// No answer within request_timeout: the call times out, unprocessed.
		if dl, ok := req.Context().Deadline(); ok {
			w.clock.Add(max(time.Until(dl).Round(time.Second), 0))
		}
		return nil, context.DeadlineExceeded
	}
	if faulted && f.kind != "lost" && f.kind != "crash" {
		w.fake.Fail(req.URL.Path, 1, f.fake)
	}
	rec := httptest.NewRecorder()
	w.fake.ServeHTTP(rec, req)
	resp := rec.Result()
	answer, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(answer))

	w.mu.Lock()
	defer w.mu.Unlock()
	var parsed struct {
		Token        string `json:"token"`
		Lifetime     int    `json:"tokenLifetime"`
		RefreshToken string `json:"refreshToken"`
	}
	_ = json.Unmarshal(answer, &parsed)
	if parsed.Token != "" {
		w.issued[parsed.Token] = w.revokes
	}
	if parsed.RefreshToken != "" && known {
		w.owner[parsed.RefreshToken] = account
		if sent != "" {
			w.spent[sent] = true
		}
		if !faulted {
			w.prevGood[account], w.lastGood[account] = w.lastGood[account], now
		}
	}
	switch {
	case sent != "" && resp.StatusCode == http.StatusUnauthorized && !w.spent[sent] && f.fake.Status == 0: // the fake's own 401
		w.excused[account] = "Teletracker ended the session (expired or revoked)"
	case faulted && f.fake.Status == http.StatusUnauthorized:
		w.excused[account] = "Teletracker refused the credential (401)"
	}
	if resp.StatusCode != http.StatusOK && known {
		w.busy[account] = now // a refusal: the next call may come after the floor
	}
	if faulted && (f.kind == "lost" || f.kind == "crash") {
		if sent != "" {
			w.lost[sent] = true
		}
		w.excused[account] = "the answer to a call was lost"
		if f.kind == "crash" {
			// The node dies while the answer is on its way: nothing it does
			// from here reaches storage, and it is replaced after the step.
			u.view.dead.Store(true)
		}
		return nil, errSimLost
	}
	return resp, nil
}
