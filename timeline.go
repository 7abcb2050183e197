package teletracker

import (
	"hash/fnv"
	"time"
)

// timeline.go holds every time in a token's life, computed in one place from
// the record and its config: when a tick replaces the token, when a read
// does, until when it is served, when it expires, and when its refresh
// token must be renewed. decide, the read path, status and metrics only
// read it; nothing else computes these times.
//
//	obtained ── replaceFrom ── due ── servedUntil ── expires
//	            (a tick)       (a read)
//
// With the request_timeout T, the tick interval and a token's guard G:
//
//	expires     = obtained + lifetime
//	servedUntil = expires - G, G = min(serveGuard, lifetime/4)
//	due         = min(expires - margin, servedUntil - T - firstRetry),
//	              never before obtained: a read's call, and one retry after
//	              the first backoff, end before the token stops being served
//	replaceFrom = due - tickInterval - spread: the tick before due
//	              replaces it, so reads do not find it due
//	renewBy     = refresh token's expiry - its own margin
//	renewFrom   = renewBy - tickInterval: the tick before it renews it
//
// margin is refresh_margin capped at half the lifetime, the bearer token's
// for due and the refresh token's for renewBy. From replaceFrom to
// servedUntil there is always a tick, a call's time and the first
// backoff, for a retry; a lifetime too short for that is due at once and
// replaced by every tick (and the floor between calls still holds).

// serveGuard is how long before its expiry a token stops being served:
// Vault's nodes are assumed to keep their clocks within this of each other
// (NTP keeps them within milliseconds). A quarter of the lifetime, if less.
const serveGuard = 5 * time.Second

// firstRetry is the longest first backoff (minRetryInterval and its
// jitter): a token is due early enough for one retry after it.
const firstRetry = minRetryInterval * 5 / 4

// timeline is when things happen to a record's tokens, on Vault's clock.
type timeline struct {
	// held says a bearer token is held; without one the times below are zero.
	held bool
	// obtained is when the call that returned the token was sent.
	obtained time.Time
	// replaceFrom: a tick replaces the token from here on.
	replaceFrom time.Time
	// due: a read replaces the token from here on (next_vault_rotation).
	due time.Time
	// servedUntil: the token is served before it, never from it on.
	servedUntil time.Time
	// expires is when Teletracker stops accepting the token.
	expires time.Time
	// renewFrom: a tick renews the refresh token from here on; zero when
	// its expiry is unknown.
	renewFrom time.Time
	// renewBy: the refresh token is due for renewal (its margin before it
	// expires); zero when its expiry is unknown.
	renewBy time.Time
}

// timeline computes r's timeline from its session and config (none for nil).
func (r *record) timeline() timeline {
	var tl timeline
	if r == nil {
		return tl
	}
	if r.Token != "" {
		m := margin(r.Lifetime, r.Config.RefreshMargin)
		tl.held = true
		tl.obtained = r.ObtainedAt
		tl.expires = r.ObtainedAt.Add(r.Lifetime)
		tl.servedUntil = tl.expires.Add(-min(serveGuard, r.Lifetime/4))
		tl.due = later(tl.obtained, earlier(tl.expires.Add(-m), tl.servedUntil.Add(-r.Config.RequestTimeout-firstRetry)))
		tl.replaceFrom = tl.due.Add(-tickInterval - spread(r.RefreshToken, m))
	}
	if exp := r.RefreshTokenExpiresAt; !exp.IsZero() {
		// The refresh token came with the bearer token (or, after an
		// incomplete answer, later: its lifetime is then overestimated,
		// and it is renewed earlier than need be).
		// (Every refresh renews both tokens, so the bearer token's spread
		// spreads herds; this one needs none.)
		tl.renewBy = exp.Add(-margin(exp.Sub(r.ObtainedAt), r.Config.RefreshMargin))
		tl.renewFrom = tl.renewBy.Add(-tickInterval)
	}
	return tl
}

// margin is how long before the end of lifetime a token is due: the
// configured margin, or half the lifetime when that is under twice it.
func margin(lifetime, configured time.Duration) time.Duration {
	if lifetime < 2*configured {
		return max(lifetime/2, 0)
	}
	return configured
}

// spread is how much earlier than due a tick replaces a token whose margin
// is m: a share of the first half of the margin, taken from the hash of
// the refresh token that came with it, so that sessions that fell due
// together (Vault ticks every mount at once) spread out over the ticks
// before they are due.
func spread(refreshToken string, m time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(refreshToken))
	return time.Duration(h.Sum64() % uint64(m/2+1))
}

// served reports whether the token may be served at now: one is held, it
// is not of unknown age, and now is before servedUntil.
func (tl *timeline) served(now time.Time) bool {
	return tl.held && now.Before(tl.servedUntil) && !tl.unknownAge(now)
}

// unknownAge reports whether the token was obtained further ahead of now
// than the nodes' clocks may disagree (serveGuard): on a clock since set
// back, or one that ran fast. Its expiry cannot be trusted: it is not
// served, and is replaced at once.
func (tl *timeline) unknownAge(now time.Time) bool {
	return tl.obtained.Sub(now) > serveGuard
}

// lasts reports whether the token is served at now with at least d left
// before it expires: what a read with min_ttl d asks for.
func (tl *timeline) lasts(now time.Time, d time.Duration) bool {
	return tl.served(now) && !now.Add(d).After(tl.expires)
}

// rotationPeriod is the time from one replacement to the next.
func (tl *timeline) rotationPeriod() time.Duration {
	return tl.due.Sub(tl.obtained)
}

// earlier returns the earlier of a and b.
func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
