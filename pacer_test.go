package teletracker

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// vclock is a virtual clock for the pacer: it moves to the next wake-up
// only when every goroutine of the test sleeps on it, so a test runs
// without real sleeps and its times are exact.
type vclock struct {
	mu       sync.Mutex
	now      time.Time
	sleepers map[*vsleeper]bool
	// live counts the goroutines of the test still running.
	live int
}

type vsleeper struct {
	ctx   context.Context
	until time.Time
	wake  chan struct{}
}

func newVclock() *vclock { return &vclock{now: testStart, sleepers: map[*vsleeper]bool{}} }

func (c *vclock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// sleep is the pacer's sleeper on c.
func (c *vclock) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	s := &vsleeper{ctx: ctx, until: c.now.Add(d), wake: make(chan struct{})}
	c.sleepers[s] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.sleepers, s)
		c.mu.Unlock()
	}()
	select {
	case <-s.wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// goroutine runs f as one of the test's goroutines.
func (c *vclock) goroutine(f func()) {
	c.mu.Lock()
	c.live++
	c.mu.Unlock()
	go func() {
		defer func() {
			c.mu.Lock()
			c.live--
			c.mu.Unlock()
		}()
		f()
	}()
}

// run moves the clock, each time every live goroutine sleeps, to the
// earliest wake-up, until none is left.
func (c *vclock) run() {
	for {
		c.mu.Lock()
		if c.live == 0 {
			c.mu.Unlock()
			return
		}
		asleep := 0
		var next *vsleeper
		for s := range c.sleepers {
			if s.ctx.Err() == nil && c.sleepers[s] {
				asleep++
				if next == nil || s.until.Before(next.until) {
					next = s
				}
			}
		}
		if asleep == c.live && next != nil {
			c.now = later(c.now, next.until)
			c.sleepers[next] = false
			close(next.wake)
		}
		c.mu.Unlock()
		runtime.Gosched()
	}
}

// turnTaken is one turn: of which mount and call, when.
type turnTaken struct {
	mount uint64
	call  int
	at    time.Time
}

// TestPacerFairAgainstHostileMount: a mount with 30 accounts that want
// calls all the time, each with a token of two seconds (so each deadline
// is sooner than anyone's), cannot starve the others: a healthy mount's
// call that arrives while they all wait gets one of the next turns, and
// the hostile mount gets what is left. (Issue 19, finding 3.)
func TestPacerFairAgainstHostileMount(t *testing.T) {
	c := newVclock()
	p := newPacer(DefaultCallsPerSecond * turnShare)
	const hostile, healthy1, healthy2 = 1, 2, 3
	var mu sync.Mutex
	var grants []turnTaken
	take := func(mount uint64, call int, deadline time.Time) {
		if _, ok := p.turn(context.Background(), c.Now, c.sleep, mount, deadline, maxPaceWait); ok {
			mu.Lock()
			grants = append(grants, turnTaken{mount, call, c.Now()})
			mu.Unlock()
		}
	}
	for i := range 30 {
		c.goroutine(func() {
			for range 4 { // a call, a 2-second token, another call...
				take(hostile, i, c.Now().Add(2*time.Second))
			}
		})
	}
	arrive := testStart.Add(time.Second) // the hostile mount's 30 calls wait by then
	for _, m := range []uint64{healthy1, healthy2} {
		c.goroutine(func() {
			_ = c.sleep(context.Background(), time.Second)
			take(m, 0, c.Now().Add(50*time.Minute))
		})
	}
	c.run()
	if len(grants) != 30*4+2 {
		t.Fatalf("%d turns, want %d", len(grants), 30*4+2)
	}
	for _, m := range []uint64{healthy1, healthy2} {
		for i, g := range grants {
			if g.mount != m {
				continue
			}
			if wait := g.at.Sub(arrive); wait > 3*p.interval {
				t.Errorf("mount %d waited %v (turn %d of %d) beside the hostile mount's queue, want at most 3 turns of %v",
					m, wait, i, len(grants), p.interval)
			}
		}
	}
	for i := 1; i < len(grants); i++ {
		if d := grants[i].at.Sub(grants[i-1].at); d < p.interval {
			t.Fatalf("turns %d and %d %v apart, under the interval %v", i-1, i, d, p.interval)
		}
	}
}

// TestPacerEarliestDeadlineFirstWithinMount: many accounts of one mount
// waiting for turns go in the order their tokens run out.
func TestPacerEarliestDeadlineFirstWithinMount(t *testing.T) {
	c := newVclock()
	p := newPacer(DefaultCallsPerSecond * turnShare)
	holdTurns(p, c.Now(), 1) // the next turn is taken: they all wait
	var mu sync.Mutex
	var order []int
	offsets := []int{7, 3, 9, 1, 5, 8, 2, 6, 4, 0}
	for _, minutes := range offsets {
		c.goroutine(func() {
			if _, ok := p.turn(context.Background(), c.Now, c.sleep, 1, testStart.Add(time.Duration(minutes)*time.Minute), maxPaceWait); ok {
				mu.Lock()
				order = append(order, minutes)
				mu.Unlock()
			}
		})
	}
	c.run()
	for i, m := range order {
		if m != i {
			t.Fatalf("turns went to the deadlines %v (minutes), want the earliest first", order)
		}
	}
	if len(order) != len(offsets) {
		t.Fatalf("%d turns of %d", len(order), len(offsets))
	}
}

// Of calls with the same deadline (new accounts have none yet), the first
// come goes first: none waits behind every later one.
func TestPacerEqualDeadlinesFirstComeFirst(t *testing.T) {
	p := newPacer(1)
	var ws []*waiter
	for range 5 {
		ws = append(ws, p.enqueue(1, time.Time{}))
	}
	for i, w := range ws {
		if got := p.best(); got != w {
			t.Fatalf("turn %d went to waiter %d, want the one that came %d", i, got.seq, w.seq)
		}
		p.dequeue(w)
	}
}
