package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// The harness's Vault cluster: nodes on loopback with integrated Raft
// storage, joined, unsealed and healthy voters, stopped by their process
// group when the test ends. With HA_LOG_DIR set, every node's full log is
// written there at the end; a failed test logs each node's notable lines.

// electLimit bounds the wait for a node to become active.
const electLimit = 45 * time.Second

// clusterNode is one member of the Raft cluster.
type clusterNode struct {
	id     string       // its Raft node_id
	addr   string       // its API address
	v      *vaultServer // the Vault process
	client *api.Client  // root token, 10 s timeout, no retries
	// down is set before the test kills the node: the load stops using it.
	down atomic.Bool
	// killed is when SIGKILL had ended the process; zero while it runs.
	killed time.Time
	// activeTime is the node's own active_time, when waitActive found it.
	activeTime time.Time
}

// raftCluster is a Vault cluster on integrated Raft storage.
type raftCluster struct {
	nodes []*clusterNode
	token string // the root token
}

// startRaftCluster starts n Vault nodes on loopback with Raft storage and
// retry_join to each other, initialises the first with one key share,
// unseals all of them, and waits until all are healthy voters.
func startRaftCluster(t *testing.T, n int) *raftCluster {
	t.Helper()
	base, err := os.MkdirTemp(env.workDir, "ha-")
	if err != nil {
		t.Fatal(err)
	}
	cl := &raftCluster{}
	used := map[int]bool{}
	for i := 0; i < n; i++ {
		port := freePort(t)
		for tries := 0; used[port] || used[port+1] || used[port-1]; tries++ {
			if tries > 20 {
				t.Fatal("no distinct free ports")
			}
			port = freePort(t)
		}
		used[port] = true
		cl.nodes = append(cl.nodes, &clusterNode{id: fmt.Sprintf("node%d", i+1), addr: "http://127.0.0.1:" + strconv.Itoa(port)})
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, nd := range cl.nodes {
			if nd.v != nil && nd.v.cmd != nil {
				wg.Add(1)
				go func() { defer wg.Done(); nd.v.stop() }()
			}
		}
		wg.Wait()
	})
	t.Cleanup(func() {
		dir := os.Getenv("HA_LOG_DIR")
		for _, nd := range cl.nodes {
			if nd.v == nil {
				continue
			}
			if dir != "" {
				path := filepath.Join(dir, nd.id+".log")
				if err := os.WriteFile(path, []byte(nd.v.output()), 0o644); err != nil {
					t.Logf("writing %s: %v", path, err)
				}
			}
			if t.Failed() {
				t.Logf("%s (%s) log, notable lines:\n%s", nd.id, nd.addr, logExcerpt(nd.v.output(), 150))
			}
		}
	})

	for i, nd := range cl.nodes {
		name := filepath.Join(filepath.Base(base), nd.id)
		dir := filepath.Join(env.workDir, name)
		if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		var joins strings.Builder
		for j, other := range cl.nodes {
			if j != i {
				fmt.Fprintf(&joins, "  retry_join {\n    leader_api_addr = %q\n  }\n", other.addr)
			}
		}
		port, _ := strconv.Atoi(strings.TrimPrefix(nd.addr, "http://127.0.0.1:"))
		config := fmt.Sprintf(`storage "raft" {
  path    = %q
  node_id = %q
%s}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
api_addr         = %q
cluster_addr     = "https://127.0.0.1:%d"
plugin_directory = %q
disable_mlock    = true
`, filepath.Join(dir, "raft"), nd.id, joins.String(), port, port+1, nd.addr, port+1, env.pluginDir)
		cfgPath := filepath.Join(dir, "vault.hcl")
		if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		v, err := startVault(name, []string{"server", "-config=" + cfgPath, "-log-level=debug"}, nd.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		nd.v = v
		if nd.client, err = newHAClient(nd.addr, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	// Init generates the keys and commits the first Raft entries: seconds
	// on a busy machine, more than the probes' 10 s timeout.
	initClient, err := cl.nodes[0].client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	initClient.SetClientTimeout(time.Minute)
	init, err := initClient.Sys().Init(&api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("init %s: %v", cl.nodes[0].id, err)
	}
	cl.token = init.RootToken
	for _, nd := range cl.nodes {
		nd.v.client.SetToken(cl.token)
		nd.client.SetToken(cl.token)
	}
	// A node joining through retry_join takes the key once it holds the
	// leader's challenge (it then reports itself initialized), and only
	// once per join attempt: a key sent again while the join completes can
	// leave that attempt broken ("failed to create cipher"). So the key is
	// sent once, and again only if the node is still sealed, with no unseal
	// in progress, well after that: a join that failed under load (the next
	// retry comes every 2 s) needs the key anew.
	unseal := func(nd *clusterNode) error {
		deadline := time.Now().Add(90 * time.Second)
		lastErr := errors.New("not unsealed")
		var keySent time.Time
		for time.Now().Before(deadline) {
			st, err := nd.client.Sys().SealStatus()
			switch {
			case err != nil:
				lastErr = err
			case !st.Sealed:
				return nil
			case st.Initialized && st.Progress == 0 && time.Since(keySent) > 15*time.Second:
				if !keySent.IsZero() {
					t.Logf("%s still sealed %v after the key was taken; sending it again", nd.id, since(keySent))
				}
				keySent = time.Now()
				if _, err := nd.client.Sys().Unseal(init.Keys[0]); err != nil {
					lastErr = fmt.Errorf("unseal: %w", err)
					keySent = time.Now().Add(-12 * time.Second) // try again in 3 s
				} else {
					lastErr = errors.New("still sealed after the key was taken")
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		return lastErr
	}
	// The first node forms the cluster, alone.
	first := cl.nodes[0]
	if err := unseal(first); err != nil {
		t.Fatalf("unseal %s: %v", first.id, err)
	}
	if err := waitFor(electLimit, func() error {
		l, err := first.client.Sys().Leader()
		if err == nil && !l.IsSelf {
			err = errors.New("not active yet")
		}
		return err
	}); err != nil {
		t.Fatalf("%s did not become active: %v", first.id, err)
	}
	// Autopilot makes a joining node a voter once it has been healthy for
	// this long (10 s by default); on loopback a little is enough.
	if _, err := first.client.Logical().Write("sys/storage/raft/autopilot/configuration",
		map[string]interface{}{"server_stabilization_time": "3s"}); err != nil {
		t.Fatal(err)
	}
	// The others join it through retry_join once they have the key.
	errs := make(chan error, len(cl.nodes))
	for _, nd := range cl.nodes[1:] {
		go func() {
			if err := unseal(nd); err != nil {
				errs <- fmt.Errorf("unseal %s: %w", nd.id, err)
				return
			}
			errs <- nil
		}()
	}
	for range cl.nodes[1:] {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := waitFor(90*time.Second, func() error {
		for _, nd := range cl.nodes {
			h, err := nd.client.Sys().Health()
			if err != nil {
				return err
			}
			if !h.Initialized || h.Sealed {
				return fmt.Errorf("%s: %+v", nd.id, h)
			}
		}
		st, err := cl.nodes[0].client.Sys().RaftAutopilotState()
		if err != nil {
			return err
		}
		if st == nil || !st.Healthy || len(st.Voters) != len(cl.nodes) {
			return fmt.Errorf("autopilot: %v", st)
		}
		return nil
	}); err != nil {
		t.Fatalf("the cluster did not become %d healthy voters: %v", n, err)
	}
	return cl
}

// newHAClient is a client for addr that neither retries nor follows a
// redirect to the active node: every failure is seen, and a request through
// a standby succeeds only when the standby forwards it.
func newHAClient(addr string, timeout time.Duration) (*api.Client, error) {
	return api.NewClient(&api.Config{Address: addr, Timeout: timeout, MaxRetries: 0, DisableRedirects: true})
}

// alive is the nodes not killed.
func (cl *raftCluster) alive() []*clusterNode {
	var out []*clusterNode
	for _, nd := range cl.nodes {
		if !nd.down.Load() {
			out = append(out, nd)
		}
	}
	return out
}

// standby is a live node other than active.
func (cl *raftCluster) standby(active *clusterNode) *clusterNode {
	for _, nd := range cl.alive() {
		if nd != active {
			return nd
		}
	}
	return active
}

// waitActive waits until one live node says it is active, and became so
// after after, and every live node names it leader. It returns that node.
func (cl *raftCluster) waitActive(t *testing.T, after time.Time, limit time.Duration) *clusterNode {
	t.Helper()
	var active *clusterNode
	err := waitFor(limit, func() error {
		active = nil
		for _, nd := range cl.alive() {
			l, err := nd.client.Sys().Leader()
			if err != nil {
				return fmt.Errorf("%s: %w", nd.id, err)
			}
			if l.IsSelf && l.ActiveTime.After(after) {
				active = nd
				nd.activeTime = l.ActiveTime
			}
		}
		if active == nil {
			return errors.New("no node is active yet")
		}
		for _, nd := range cl.alive() {
			if l, err := nd.client.Sys().Leader(); err != nil || l.LeaderAddress != active.addr {
				return fmt.Errorf("%s does not name %s leader yet (%v)", nd.id, active.id, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no new active node within %v: %v", limit, err)
	}
	return active
}

// logExcerpt is the last n notable lines of a Vault log: warnings, errors,
// core and Raft state changes, and the engine's own lines.
func logExcerpt(out string, n int) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "security barrier not initialized") {
			continue
		}
		if strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]") ||
			strings.Contains(line, "teletracker") ||
			(strings.Contains(line, "[INFO]") && (strings.Contains(line, "core:") || strings.Contains(line, "storage.raft"))) {
			keep = append(keep, line)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// since is the time since t, to the millisecond, for logs.
func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }
