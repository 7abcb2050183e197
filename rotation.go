package teletracker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// rotation.go is the one path by which anything calls Teletracker for an
// account. A tick, a token read, a rotate and a config write all come
// through apply, under the account's refresh lock: lock → load → decide →
// store marker → call → store result → publish. decide.go says when; this
// file only does it.

const (
	// storageTimeout bounds the storage round trips before and after a call.
	storageTimeout = 15 * time.Second
	// saveAttempts is how often a result is tried before it is held.
	saveAttempts = 4
	// saveRetryDelay is the first pause between those tries; it doubles.
	saveRetryDelay = 50 * time.Millisecond
)

// change turns the stored record (nil when there is none) into the one a
// config write asks for, and says which trigger it is.
type change func(prev *record) (*record, trigger, error)

// apply brings the record up to date for t (or what ch, a config write, asks),
// publishes it, and returns it with why a call it wanted failed or was not made.
func (a *account) apply(ctx context.Context, storage logical.Storage, t trigger, ch change) (*record, error) {
	a.refreshMu.Lock()
	defer a.refreshMu.Unlock()
	return a.applyLocked(ctx, storage, t, ch)
}

// applyLocked is apply for a caller that holds refreshMu. An account the
// mount forgot while the caller waited hands the work to the name's account
// now (a config write makes one), so that one name never has two locks.
func (a *account) applyLocked(ctx context.Context, storage logical.Storage, t trigger, ch change) (*record, error) {
	if a.forgotten.Load() {
		next := a.m.account(a.name)
		if ch == nil {
			var err error
			if next, err = a.m.existing(ctx, storage, a.name); next == nil {
				return nil, cmp.Or(err, errNotConfigured)
			}
		}
		return next.apply(ctx, storage, t, ch)
	}
	// The snapshot is what this node last stored or loaded (or nil after
	// Invalidate): while it asks for no call, storage is not read again.
	if snap := a.snap.Load(); snap != nil && ch == nil && a.held.Load() == nil {
		now := a.m.now()
		if act := decide(snap.rec, now, t); !act.calls() {
			a.m.sched.set(a, tickAt(snap.rec, now))
			return snap.rec, act.err()
		}
	}
	epoch := a.epoch.Load()
	loadCtx, cancel := context.WithTimeout(ctx, storageTimeout)
	prev, err := a.load(loadCtx, storage)
	cancel()
	if err != nil {
		a.loadFailed.Store(&loadFailure{at: a.m.now(), err: err.Error()})
		return nil, err
	}
	a.loadFailed.Store(nil)
	r := prev
	if tl := r.timeline(); tl.held && tl.unknownAge(a.m.now()) {
		// Stamped on a clock since set back, or one that ran fast: its age
		// is unknown, and it must not look valid once the clock catches
		// up. Dropped (and stored so) while its refresh token goes on.
		r = r.withoutToken()
	}
	if ch != nil {
		if r, t, err = ch(prev); err != nil {
			a.publish(epoch, prev) // load may have stored a held record
			return prev, err
		}
	}
	if !r.configured() && ch == nil {
		return nil, errNotConfigured
	}
	r, err = a.spend(ctx, storage, prev, r, t)
	a.publish(epoch, r)
	return r, err
}

// spend makes the call decide asks of r (one at most), stores the outcome,
// and returns the record to serve with the call's error; prev is r before a
// config write.
func (a *account) spend(ctx context.Context, storage logical.Storage, prev, r *record, t trigger) (*record, error) {
	act := decide(r, a.m.now(), t)
	if !act.calls() {
		if t.kind == triggerCredential {
			return prev, act.err() // a write that cannot call changes nothing
		}
		return a.keep(ctx, storage, prev, r, t, false, act.err())
	}
	if !a.m.WriteSafeReplicationState() {
		return prev, logical.ErrReadOnly // Vault forwards the request to the active node
	}
	tl := r.timeline()
	if err := a.pace(ctx, tl.servedUntil, act.paceWait); err != nil {
		a.log().Info("call deferred", "reason", err)
		if t.kind == triggerCredential {
			return prev, err
		}
		return a.keep(ctx, storage, prev, r, t, false, err) // deferred, not failed
	}
	// Once anything is sent, the caller going away must not stop its
	// result from being stored: nothing below listens to it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.Config.RequestTimeout+2*storageTimeout)
	defer cancel()
	sentAt, sendBy := a.m.now(), a.m.mono().Add(sendWindow)
	var marker *record
	// A marker tells the other nodes of the call before it is sent: of a
	// refresh, whose token may be spent, and of the engine's own login, so
	// that a node that dies after sending it still holds the next active
	// one (or one paused past its HA lock, not yet aware) to the floor. A
	// config write's login stores none: its marker would store a password
	// Teletracker has not yet accepted.
	if act.kind == actRefresh || (act.kind == actLogin && t.kind != triggerCredential) {
		marker = r.marked(act.kind, sentAt)
		if err := putRecord(ctx, storage, a.key, marker); err != nil {
			a.log().Error("call not attempted: storing its marker failed", "error", err)
			err = fmt.Errorf("call not attempted: storing its marker failed: %w", err)
			if t.kind == triggerCredential {
				return prev, fmt.Errorf("nothing changed: %w", err)
			}
			return a.keep(ctx, storage, prev, settle(r, act.kind, nil, err, sentAt, a.m.now()), t, false, err) // a failure, with its backoff
		}
		// No call goes out later than its marker promises to others.
		sendBy = earlier(sendBy, a.m.mono().Add(sentAt.Add(sendWindow).Sub(a.m.now())))
	}
	g, err := a.call(ctx, &r.Config, act.kind, r.RefreshToken, sendBy)
	if errors.Is(err, errNotSent) {
		return a.unsent(ctx, storage, prev, r, t, marker, err)
	}
	if err != nil && g == nil && t.kind == triggerCredential {
		return a.refuse(ctx, storage, prev, marker != nil, sentAt, err)
	}
	r, callErr := settle(r, act.kind, g, err, sentAt, a.m.now()), err
	if err != nil && t.kind == triggerCredential {
		// A refresh token spent for an incomplete answer that carried a
		// new one: the write stands, with the new refresh token.
		callErr = &appliedError{fmt.Errorf("the answer of Teletracker was incomplete (%v); the session continues with its new refresh token, and a token is fetched on the next attempt", err)}
	}
	if marker != nil {
		if other := a.movedOn(ctx, storage, marker, r); other != nil {
			return other, deletedOr(other, callErr)
		}
	}
	return a.keep(ctx, storage, prev, r, t, marker != nil, callErr)
}

// unsent answers a call that was never sent (Clean began, or its marker's
// Put was acknowledged too late to send it): nothing failed, nothing is
// counted, and the marker, if one was stored, is taken back. The record
// stays as it was before; for a config write, as it was before the write.
func (a *account) unsent(ctx context.Context, storage logical.Storage, prev, r *record, t trigger, marker *record, err error) (*record, error) {
	a.log().Info("call not sent", "reason", err)
	back := r
	if t.kind == triggerCredential {
		back = prev
	}
	if errors.Is(err, errMarkerLate) && t.kind != triggerCredential {
		// Storage too slow to send within the marker's window: a failure
		// (storage's), retried on the backoff, and what status says.
		back = settle(r, actRefresh, nil, err, marker.InFlightAt, a.m.now())
	}
	if marker == nil {
		return back, err
	}
	if back == nil {
		back = &record{} // a first config write: nothing was stored before
	}
	if other := a.movedOn(ctx, storage, marker, back); other != nil {
		return other, deletedOr(other, err)
	}
	if !back.configured() {
		back = back.waitsOnly()
	}
	saved, serr := a.store(ctx, storage, back)
	if serr != nil {
		// The marker stands: the next attempt resolves it once its window
		// is over, as after a crash.
		a.log().Warn("taking back the marker of a call not sent failed", "error", serr)
		return marker, err
	}
	return saved, err
}

// movedOn returns the stored record when storage no longer holds marker,
// the marker this node stored before its call, because another node moved
// the session on meanwhile (one that took over while this one was paused),
// and r, what this node would store now, does not hold a session where
// that record lost it. Nil when r is to be stored: the marker stands, or it
// cannot be read (then storing r is what is left to do).
func (a *account) movedOn(ctx context.Context, storage logical.Storage, marker, r *record) *record {
	cur, _, err := getRecord(ctx, storage, a.key)
	if err == nil && cur == nil && a.name != "" {
		// Another node deleted the account during this node's call: it
		// stays deleted, and only its waits (this call's among them) stay
		// here, while they last.
		a.log().Warn("the account was deleted during this node's call; it stays deleted")
		gone := r.waitsOnly()
		gone.LastCallAt = later(gone.LastCallAt, marker.LastCallAt)
		gone.NotBefore = later(gone.NotBefore, marker.NotBefore)
		gone.HoldUntil = later(gone.HoldUntil, marker.HoldUntil)
		a.held.Store(nil)
		a.gone.Store(gone)
		return gone
	}
	if err != nil || cur == nil || (cur.State == marker.State && cur.InFlightAt.Equal(marker.InFlightAt) &&
		cur.LastCallAt.Equal(marker.LastCallAt) && cur.Generation == marker.Generation && cur.RefreshToken == marker.RefreshToken) {
		return nil
	}
	renewed := r != nil && r.Generation > marker.Generation
	switch {
	case renewed && (cur.needsReauth() || cur.State == stateNeedLogin):
		a.log().Warn("another node lost the session this node's call renewed; storing this node's", "generation", r.Generation)
		return nil
	case renewed && cur.Generation == marker.Generation && cur.RefreshToken == marker.RefreshToken:
		// The other node holds the refresh token this node spent: its call
		// with it can only be refused. This node's session is the way on.
		a.log().Warn("another node took over during this node's call, with the refresh token this call spent; storing this node's session", "generation", r.Generation)
		return nil
	}
	a.log().Warn("another node moved the session on during this node's call; keeping its record", "generation", cur.Generation)
	a.held.Store(nil)
	return cur
}

// deletedOr is errNotConfigured when r, what another node left in
// storage during a call, has no config (the account was deleted), else err.
func deletedOr(r *record, err error) error {
	if !r.configured() {
		return errNotConfigured
	}
	return err
}

// keep stores r, what spend made of prev, unless it is prev, and returns the
// record to serve with callErr; marked says whether a refresh's marker
// stands in storage. A config write that sent nothing and cannot be stored
// changes nothing; anything else that cannot be stored is held.
func (a *account) keep(ctx context.Context, storage logical.Storage, prev, r *record, t trigger, marked bool, callErr error) (*record, error) {
	if r == prev {
		return r, callErr
	}
	saved, err := a.store(ctx, storage, r)
	if err != nil {
		if !marked && (t.kind == triggerCredential || t.kind == triggerTune) {
			a.log().Error("config not stored; nothing changed", "error", err)
			return prev, fmt.Errorf("storing the config failed, nothing changed: %w", err)
		}
		held := a.hold(r, err)
		if callErr != nil {
			return held, callErr
		}
		return held, &appliedError{fmt.Errorf("%w: %v", errNotStored, err)}
	}
	return saved, callErr
}

// refuse answers a config write whose call failed: nothing changes but the
// waits that call set, stored so that a looping script cannot make a storm.
func (a *account) refuse(ctx context.Context, storage logical.Storage, prev *record, marked bool, sentAt time.Time, err error) (*record, error) {
	next := refused(prev, sentAt, a.m.now(), err)
	a.log().Warn("config write: Teletracker call failed; nothing changed", "error", err)
	saved, serr := a.store(ctx, storage, next)
	switch {
	case serr == nil:
		next = saved
	case marked:
		// The marker stands in storage: put it right later.
		a.log().Error("putting back the previous record failed", "error", serr)
		next = a.hold(next, serr)
	}
	return next, err
}

// hold keeps r, which storage refused, in memory: served, stored before
// anything else is done, and no call is made until it is.
func (a *account) hold(r *record, err error) *record {
	held := *r
	held.unsaved = true
	a.held.Store(&held)
	a.log().Error("record not stored; holding it in memory and storing it before anything else", "error", err, "generation", r.Generation)
	return &held
}

// load returns the record to act on: the held one (stored now, if this node
// may write), else the stored one, moved from the v0.1.0 layout if need be.
func (a *account) load(ctx context.Context, storage logical.Storage) (*record, error) {
	if h := a.held.Load(); h != nil {
		if !a.m.WriteSafeReplicationState() {
			return h, nil
		}
		saved, err := a.store(ctx, storage, h)
		if err != nil {
			return h, nil
		}
		a.log().Info("held record is now stored", "generation", h.Generation)
		return saved, nil
	}
	r, legacy, err := getRecord(ctx, storage, a.key)
	if r == nil && err == nil {
		r = a.gone.Load() // a deleted account's waits, while they last
	}
	if err != nil || !legacy || !a.m.WriteSafeReplicationState() {
		return r, err
	}
	if err := putRecord(ctx, storage, a.key, r); err != nil {
		return nil, fmt.Errorf("moving to the one-record layout: %w", err)
	}
	if err := deleteLegacy(ctx, storage); err != nil {
		a.log().Warn("moved to the one-record layout; the v0.1.0 entries stay behind", "error", err)
	}
	a.log().Info("moved the mount's storage to the one-record layout", "state", r.State)
	return r, nil
}

// store puts r, retrying with a doubling pause while ctx allows, and returns
// r as stored. Once it succeeds, no record is held (r was made from it), and
// the copy returned is not marked unsaved, whatever r was made from. A
// named account without a config is stored by deleting its entry: what is
// left of it, its waits, stays in memory (a.gone) while they last.
func (a *account) store(ctx context.Context, storage logical.Storage, r *record) (*record, error) {
	delay := saveRetryDelay
	for i := 1; ; i++ {
		var err error
		if a.name != "" && !r.configured() {
			err = storage.Delete(ctx, a.key)
		} else {
			err = putRecord(ctx, storage, a.key, r)
		}
		if err == nil {
			a.held.Store(nil)
			saved := *r
			saved.unsaved = false
			a.gone.Store(nil)
			if !saved.configured() && a.name != "" {
				a.gone.Store(&saved)
			}
			return &saved, nil
		}
		if i == saveAttempts {
			return nil, err
		}
		if a.m.sleep(ctx, delay) != nil {
			return nil, err
		}
		delay *= 2
	}
}

// call sends one login or refresh under cfg and logs its outcome, unless
// Clean began or sendBy (on the mono clock) has passed by the time it
// could be sent: then nothing is sent, and the error is errNotSent. A
// client that cannot be built is a failed call like any other, recorded
// where status shows it.
func (a *account) call(ctx context.Context, cfg *config, kind actionKind, refreshToken string, sendBy time.Time) (*grant, error) {
	op := refreshPath
	if kind == actLogin {
		op = loginPath
	}
	a.log().Debug("calling teletracker", "op", op)
	var g *grant
	c, done, err := a.m.proc.client(cfg, a.m.now, a.m.mono)
	if err == nil {
		defer done()
		if err = a.m.proc.send(ctx, a.m.mono, a.m.sleep); err != nil {
			err = fmt.Errorf("%w: %v", errNotSent, err)
		}
	}
	switch {
	case err != nil:
	case a.m.life.Err() != nil:
		err = fmt.Errorf("%w: %w", errNotSent, errCleaned) // Clean began since the turn
	case !a.m.mono().Before(sendBy):
		err = fmt.Errorf("%w: %w", errNotSent, errMarkerLate)
	default:
		ctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		start := a.m.mono()
		a.lastCall = start
		if kind == actLogin {
			g, err = c.login(ctx, cfg.Username, cfg.Password, cfg.AccountID)
		} else {
			g, err = c.refresh(ctx, refreshToken)
		}
		cancel()
		// The floor runs from the answer too, so that Teletracker sees two
		// calls 10 s apart, however long the first took to arrive.
		a.lastCall = a.m.mono()
		a.m.metrics.observe(kind, a.lastCall.Sub(start), err)
	}
	switch {
	case errors.Is(err, errNotSent):
	case err != nil:
		a.log().Warn("teletracker call failed", "op", op, "error", err)
	default:
		a.log().Info("new token", "op", op, "lifetime", g.lifetime.String())
	}
	return g, err
}
