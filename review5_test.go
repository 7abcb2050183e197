// Regression tests from the review of the fourth review's fixes: each failed
// before the fix that followed it.

package teletracker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"golang.org/x/time/rate"
)

// R5-1: newSnapshot's readRetry actAt (now+1s) is not capped at the end of
// the token's validity: a deferred read half a second before the token stops
// being valid publishes a snapshot that answers every read for the next
// second from memory alone. Once the token is invalid those reads fail
// (502) without trying the call, though the pacer has a turn free and a
// read of an invalid token would wait up to maxPaceWait for it.
func TestReview5ReadRetryOutlivesValidity(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.b.proc.pacer = rate.NewLimiter(rate.Every(time.Hour), 1)
	e.b.proc.pacer.Allow()                             // other mounts hold the next turns
	e.clock.Add(59*time.Minute - 500*time.Millisecond) // due, valid for 0.5 s more
	e.readToken()                                      // deferred: valid, no wait
	e.b.proc.pacer = rate.NewLimiter(maxCallRate, 1)   // turns free again
	e.clock.Add(600 * time.Millisecond)                // no longer valid
	before := e.fake.Stats()
	resp, err := e.request(logical.ReadOperation, "token", nil)
	st := e.fake.Stats()
	calls := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls
	if err != nil || resp == nil || resp.IsError() {
		t.Fatalf("read of a token past validity made %d call(s) with a free turn and failed: err=%v resp=%v", calls, err, resp)
	}
}

// R5-2: pace checks b.life only when it returns; a turn taken just before
// Clean begins still sends, after Clean began (while the marker is stored
// and the send waits for sendGap, neither of which looks at b.life).
func TestReview5CallAfterCleanBegan(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	e.clock.Add(49 * time.Minute)
	var cleanAt atomic.Int64
	slow := &slowPuts{Storage: e.storage, delay: 300 * time.Millisecond}
	done := make(chan struct{})
	before := e.fake.Stats()
	go func() {
		defer close(done)
		_ = e.b.periodicFunc(context.Background(), &logical.Request{Storage: slow})
	}()
	time.Sleep(100 * time.Millisecond) // the tick has its turn and stores its marker
	cleanAt.Store(time.Now().UnixNano())
	e.b.clean(context.Background())
	<-done
	st := e.fake.Stats()
	if n := st.LoginCalls + st.RefreshCalls - before.LoginCalls - before.RefreshCalls; n != 0 {
		t.Errorf("%d call(s) sent after Clean began (Clean at %v)", n, time.Unix(0, cleanAt.Load()).Format(time.StampMilli))
	}
}
