package teletracker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// configureAccount writes a working config for the named account, logging
// in to the fake (or to base_url in extra).
func (e *testEnv) configureAccount(name string, extra map[string]interface{}) {
	e.t.Helper()
	data := map[string]interface{}{"base_url": e.url, "username": "demo", "password": "demo-password"}
	for k, v := range extra {
		data[k] = v
	}
	e.mustRequest(logical.UpdateOperation, accountsPrefix+name, data)
}

// storedAccount is the named account's record as stored, nil if none.
func (e *testEnv) storedAccount(name string) *record {
	e.t.Helper()
	r, err := getEntry[record](context.Background(), e.storage.Storage, accountKey(name))
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// handle sends one request to the mount through HandleRequest with storage s.
func (e *testEnv) handle(s logical.Storage, op logical.Operation, path string, data map[string]interface{}) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{Operation: op, Path: path, Data: data, Storage: s})
}

// gate is a Teletracker in front of the fake whose calls wait, once shut,
// until it is opened: a slow upstream for the accounts whose base_url is
// its url, and for them alone.
type gate struct {
	url string
	// arrived gets one value for each call that reached the gate while shut.
	arrived chan struct{}
	mu      sync.Mutex
	// shut is closed when the gate opens; nil while open.
	shut chan struct{}
	// calls counts the calls that reached it.
	calls int
}

// newGate is an open gate in front of e's fake.
func newGate(t *testing.T, e *testEnv) *gate {
	g := &gate{arrived: make(chan struct{}, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.calls++
		shut := g.shut
		g.mu.Unlock()
		if shut != nil {
			g.arrived <- struct{}{}
			<-shut
		}
		e.fake.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(g.open)
	g.url = srv.URL
	return g
}

// close makes the calls from now on wait until open.
func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut == nil {
		g.shut = make(chan struct{})
	}
}

// open lets the waiting calls, and all later ones, through.
func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut != nil {
		close(g.shut)
		g.shut = nil
	}
}

// callCount is how many calls reached the gate.
func (g *gate) callCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls
}

// keyFaults is storage that fails every Get, Put and Delete of the keys
// fail names, and passes the others through.
type keyFaults struct {
	logical.Storage
	fail func(key string) bool
}

func (s keyFaults) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if s.fail(key) {
		return nil, errStorageDown
	}
	return s.Storage.Get(ctx, key)
}

func (s keyFaults) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.fail(e.Key) {
		return errStorageDown
	}
	return s.Storage.Put(ctx, e)
}

func (s keyFaults) Delete(ctx context.Context, key string) error {
	if s.fail(key) {
		return errStorageDown
	}
	return s.Storage.Delete(ctx, key)
}

// finishes runs f in a goroutine and fails the test unless it returns
// while blocked holds (before release is called by the test's failsafe):
// f must not wait for what blocked waits on.
func finishes(t *testing.T, what string, release func(), f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	failsafe := time.AfterFunc(10*time.Second, release)
	<-done
	if !failsafe.Stop() {
		t.Fatalf("%s waited for another account's call", what)
	}
}
