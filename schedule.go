package teletracker

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// schedule.go is the mount's tick: which of its accounts a tick has work
// for, in order of when (a heap of each account's next tick time, kept
// by publish), so that a tick costs what is due, not what exists. A tick
// pops the accounts that are due, the one whose token stops being served
// first at the head, and brings each up to date under its own lock; those
// the call budget cannot serve within maxPaceWait wait for the next tick.
// One full pass is made when the mount is loaded, and again if Vault's
// clock was set back.

// schedule is the mount's accounts by when a tick next has work for them.
type schedule struct {
	// mu guards the heap and each account's dueAt and index.
	mu sync.Mutex
	// heap holds the accounts scheduled, the earliest dueAt first.
	heap accountHeap
}

// set schedules a for at; never takes it out of the schedule.
func (s *schedule) set(a *account, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case a.forgotten.Load() && a.index < 0:
		// Forgotten (forget sets it before it removes a): not taken again.
	case at.Equal(never):
		if a.index >= 0 {
			heap.Remove(&s.heap, a.index)
		}
	case a.index >= 0:
		a.dueAt = at
		heap.Fix(&s.heap, a.index)
	default:
		a.dueAt = at
		heap.Push(&s.heap, a)
	}
}

// remove takes a out of the schedule.
func (s *schedule) remove(a *account) {
	s.set(a, never)
}

// due pops the accounts due at now.
func (s *schedule) due(now time.Time) []*account {
	s.mu.Lock()
	defer s.mu.Unlock()
	var due []*account
	for len(s.heap) > 0 && !s.heap[0].dueAt.After(now) {
		due = append(due, heap.Pop(&s.heap).(*account))
	}
	return due
}

// tickAt is when a tick next has work for r, as of now: now when decide
// would call (or store a held record); when the wait it names ends; else
// the first of the token's replaceFrom and the refresh token's renewFrom;
// never when only an operator can help. A deleted account's waits are its
// work: it is forgotten once they are over.
func tickAt(r *record, now time.Time) time.Time {
	switch {
	case r == nil:
		return never
	case !r.configured():
		return later(r.HoldUntil, r.NotBefore, r.LastCallAt.Add(minCallInterval))
	}
	act := decide(r, now, trigger{kind: triggerTick})
	switch act.kind {
	case actWait:
		return act.at
	case actStop:
		return never
	case actNothing:
		tl := r.timeline()
		if tl.renewFrom.IsZero() {
			return tl.replaceFrom
		}
		return earlier(tl.replaceFrom, tl.renewFrom)
	}
	return now
}

// periodicFunc runs on Vault's tick and refreshes ahead of need. Nothing is
// called or written where storage is not writable (standbys, performance
// secondaries): spend checks the replication state before any call, not
// every tick (it is a round trip to Vault). What a tick could not do is
// logged and shown by status; only a storage failure is returned.
func (b *backend) periodicFunc(ctx context.Context, req *logical.Request) error {
	defer b.proc.releaseMemory(b.mono())
	var loadErr error
	if !b.loaded.Load() && b.WriteSafeReplicationState() {
		// What did load is scheduled, at times read as it loaded (so the
		// tick's now is read after); the rest is tried again next tick.
		loadErr = b.loadAll(ctx, req.Storage)
	}
	now := b.now()
	if last := b.lastTick(); !last.IsZero() && ahead(now, last) {
		b.scheduleAll(now) // the clock was set back: every time kept is in its future
	}
	b.tickedAt.Store(now.UnixNano())
	due := b.sched.due(now)
	if len(due) == 0 {
		return loadErr
	}
	// The account whose token stops being served first goes first; what the
	// budget cannot serve before maxPaceWait waits for the next tick.
	slices.SortFunc(due, func(x, y *account) int { return cmp.Compare(x.urgency(), y.urgency()) })
	if n := int(maxPaceWait.Seconds() * b.proc.turns()); len(due) > n {
		for _, a := range due[n:] {
			b.sched.set(a, now)
		}
		due = due[:n]
	}
	errs := make([]error, len(due))
	b.forEach(due, func(i int, a *account) { errs[i] = a.tick(ctx, req.Storage) })
	return errors.Join(append(errs, loadErr)...)
}

// tick brings a up to date on the mount's tick. A deleted account is
// forgotten once its waits are over. An account whose lock is held (a call
// under way) is not waited for: the next tick looks at it again. Only a
// storage failure is returned.
func (a *account) tick(ctx context.Context, storage logical.Storage) error {
	if !a.refreshMu.TryLock() {
		a.m.sched.set(a, a.m.now())
		return nil
	}
	defer a.refreshMu.Unlock()
	r, err := a.applyLocked(ctx, storage, trigger{kind: triggerTick}, nil)
	if r == nil && !errors.Is(err, errNotConfigured) {
		a.m.sched.set(a, a.m.now()) // storage failed: the next tick tries again
	}
	switch {
	case errors.Is(err, errNotConfigured):
		if r := a.gone.Load(); a.held.Load() == nil && a.snap.Load() == nil &&
			(r == nil || !tickAt(r, a.m.now()).After(a.m.now())) && a.m.mono().Sub(a.lastCall) >= minCallInterval {
			a.m.forget(a)
		} else if r != nil {
			a.m.sched.set(a, tickAt(r, a.m.now()))
		}
		return nil
	case succeeded(err) || errors.Is(err, logical.ErrReadOnly) || statusCode(triggerTick, err) != http.StatusInternalServerError:
		return nil
	}
	return err
}

// urgency is when a's token stops being served, as the schedule orders
// accounts: the snapshot's, or now for an account not loaded.
func (a *account) urgency() int64 {
	if st := a.snap.Load(); st != nil && st.tl.held {
		return st.tl.servedUntil.UnixNano()
	}
	return 0
}

// scheduleAll schedules every account the mount knows for now, as after a
// clock set back: each tick then recomputes its time.
func (b *backend) scheduleAll(now time.Time) {
	b.accountsMu.RLock()
	defer b.accountsMu.RUnlock()
	b.sched.set(b.defAccount, now)
	for _, a := range b.accounts {
		b.sched.set(a, now)
	}
}

// accountHeap orders accounts by dueAt.
type accountHeap []*account

func (h accountHeap) Len() int           { return len(h) }
func (h accountHeap) Less(i, j int) bool { return h[i].dueAt.Before(h[j].dueAt) }
func (h accountHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *accountHeap) Push(x any) {
	a := x.(*account)
	a.index = len(*h)
	*h = append(*h, a)
}
func (h *accountHeap) Pop() any {
	old := *h
	a := old[len(old)-1]
	a.index = -1
	*h = old[:len(old)-1]
	return a
}
