package teletracker

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// pacer.go hands out the plugin process's calls to Teletracker in turns,
// at most rate a second for all mounts and accounts together. While calls
// wait, each mount gets a fair share of the turns (start-time fair
// queueing, one flow per mount), and within a mount the account whose
// token stops being served first goes first. So a mount whose accounts
// want calls all the time (tokens of two seconds, a herd) cannot take the
// turns of the others: it is served as often as each of them, and what is
// left over.

// pacer is the process's turns.
type pacer struct {
	// mu guards everything below.
	mu sync.Mutex
	// interval is the time between two turns.
	interval time.Duration
	// next is when the next turn may be taken, on the monotonic clock.
	next time.Time
	// vtime is the fair queueing's virtual time: the tag of the last turn.
	vtime float64
	// flows are the mounts with calls waiting, by mount.
	flows map[uint64]*flow
	// finish is when each mount's last turn ended in virtual time, while
	// that is still ahead of vtime (it bounds its next tag).
	finish map[uint64]float64
	// arrived counts the calls enqueued: of equal deadlines, the first
	// come goes first.
	arrived uint64
}

// flow is one mount's waiting calls.
type flow struct {
	mount uint64
	// tag is the virtual time its next turn starts at.
	tag float64
	// waiters are its calls waiting, the earliest deadline first.
	waiters waiterHeap
}

// waiter is one call waiting for its turn.
type waiter struct {
	flow *flow
	// deadline is when the token of its account stops being served.
	deadline time.Time
	// seq is its place in the order the calls came in.
	seq uint64
	// wake cuts its sleep short, to look again; set while it sleeps.
	wake context.CancelFunc
	// index is its place in its flow's heap.
	index int
}

func newPacer(rate float64) *pacer {
	return &pacer{interval: time.Duration(float64(time.Second) / rate), flows: map[uint64]*flow{}, finish: map[uint64]float64{}}
}

// turn is a call's turn for mount, whose account's token stops being
// served at deadline: now at once when no one waits and a turn is free,
// else once it is the call to go and its time has come, waiting (on now's
// clock, with sleep) at most maxWait. It returns how long the turn would
// still have taken when it gives up (ctx ended, maxWait is up, or even a
// turn after all that wait now would come later than that), and false.
func (p *pacer) turn(ctx context.Context, now func() time.Time, sleep sleeper, mount uint64, deadline time.Time, maxWait time.Duration) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := now()
	if len(p.flows) == 0 && !start.Before(p.next) {
		p.take(mount, p.tagFor(mount), start)
		return 0, true
	}
	if eta := p.eta(start); eta > maxWait {
		return eta, false // not even a turn after all that wait now
	}
	w := p.enqueue(mount, deadline)
	// What the last sleep waited for, once it ran its course: a clock that
	// stands still while a sleep runs (a test's) must not make it loop.
	var sleptUntilNext, sleptOut bool
	var next time.Time
	for {
		t := now()
		best := p.best()
		if best == w && (!t.Before(p.next) || sleptUntilNext && p.next.Equal(next)) {
			p.dequeue(w)
			p.take(mount, w.flow.tag, t)
			p.advance(w.flow)
			p.wakeBest()
			return 0, true
		}
		left := maxWait - t.Sub(start)
		if left <= 0 || sleptOut || ctx.Err() != nil {
			eta := p.eta(t)
			p.dequeue(w)
			p.wakeBest()
			return eta, false
		}
		wait, untilNext := left, false
		if best == w && p.next.Sub(t) < left {
			wait, untilNext, next = p.next.Sub(t), true, p.next
		}
		wctx, cancel := context.WithCancel(ctx)
		w.wake = cancel
		p.mu.Unlock()
		err := sleep(wctx, wait)
		p.mu.Lock()
		w.wake = nil
		cancel()
		sleptUntilNext, sleptOut = err == nil && untilNext, err == nil && !untilNext
	}
}

// tagFor is the virtual time a turn of mount, arriving now, starts at.
func (p *pacer) tagFor(mount uint64) float64 {
	return max(p.vtime, p.finish[mount])
}

// take records a turn of mount whose tag is tag, taken at now.
func (p *pacer) take(mount uint64, tag float64, now time.Time) {
	p.vtime = tag
	p.finish[mount] = tag + 1
	for m, f := range p.finish {
		if f <= p.vtime {
			delete(p.finish, m)
		}
	}
	p.next = later(p.next, now).Add(p.interval)
}

// eta is how long from now a new call would wait for its turn, if all
// that wait now go first.
func (p *pacer) eta(now time.Time) time.Duration {
	n := 0
	for _, f := range p.flows {
		n += len(f.waiters)
	}
	return max(p.next.Sub(now), 0) + time.Duration(n)*p.interval
}

// enqueue adds a call of mount with deadline to the waiters.
func (p *pacer) enqueue(mount uint64, deadline time.Time) *waiter {
	f := p.flows[mount]
	if f == nil {
		f = &flow{mount: mount, tag: p.tagFor(mount)}
		p.flows[mount] = f
	}
	p.arrived++
	w := &waiter{flow: f, deadline: deadline, seq: p.arrived}
	heap.Push(&f.waiters, w)
	return w
}

// dequeue removes w from the waiters, and its flow once it has none.
func (p *pacer) dequeue(w *waiter) {
	f := w.flow
	heap.Remove(&f.waiters, w.index)
	if len(f.waiters) == 0 {
		delete(p.flows, f.mount)
	}
}

// advance moves a flow that just had a turn to its next tag.
func (p *pacer) advance(f *flow) {
	f.tag = p.tagFor(f.mount)
}

// best is the call to go next: of the mount with the lowest tag, the one
// whose deadline comes first (ties between mounts go to the earlier
// deadline too); nil when none waits.
func (p *pacer) best() *waiter {
	var best *waiter
	for _, f := range p.flows {
		w := f.waiters[0]
		if best == nil || f.tag < best.flow.tag || f.tag == best.flow.tag && w.deadline.Before(best.deadline) ||
			f.tag == best.flow.tag && w.deadline.Equal(best.deadline) && f.mount < best.flow.mount {
			best = w
		}
	}
	return best
}

// wakeBest wakes the call to go next, so that it sleeps until its turn.
func (p *pacer) wakeBest() {
	if w := p.best(); w != nil && w.wake != nil {
		w.wake()
	}
}

// waiterHeap orders a flow's waiters by deadline, then as they came.
type waiterHeap []*waiter

func (h waiterHeap) Len() int { return len(h) }
func (h waiterHeap) Less(i, j int) bool {
	return h[i].deadline.Before(h[j].deadline) || h[i].deadline.Equal(h[j].deadline) && h[i].seq < h[j].seq
}
func (h waiterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *waiterHeap) Push(x any) {
	w := x.(*waiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waiterHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}
