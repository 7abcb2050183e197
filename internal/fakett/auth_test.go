package fakett

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRefreshSingleUse(t *testing.T) {
	s, ts := start(t, Options{})
	first := login(t, ts)

	second := refresh(t, ts, first.str("refreshToken"))
	checkSession(t, second)
	if second.str("guid") != first.str("guid") {
		t.Errorf("refresh changed guid from %q to %q", first.str("guid"), second.str("guid"))
	}
	if second.str("token") == first.str("token") || second.str("refreshToken") == first.str("refreshToken") {
		t.Errorf("refresh did not issue new tokens: %s", second.raw)
	}

	wantFailure(t, refresh(t, ts, first.str("refreshToken")), http.StatusUnauthorized, "refresh token already used")
	if !s.Live(first.str("token")) {
		t.Error("the previous bearer token died at refresh, want it valid until its own expiry")
	}
	third := refresh(t, ts, second.str("refreshToken"))
	checkSession(t, third)
	if third.str("guid") != first.str("guid") {
		t.Errorf("second refresh changed guid to %q", third.str("guid"))
	}

	st := s.Stats()
	if st.RefreshCalls != 3 || st.Refreshes != 2 || st.ReusedRefreshTokens != 1 || st.RejectedRefreshes != 1 {
		t.Errorf("stats = %+v, want 3 calls, 2 refreshes, 1 re-use, 1 rejected", st)
	}
}

func TestRefreshEncodings(t *testing.T) {
	_, ts := start(t, Options{})
	res := postJSON(t, ts, refreshPath, `{"refresh_token":"`+login(t, ts).str("refreshToken")+`"}`)
	checkSession(t, res)
	checkSession(t, postMultipart(t, ts, refreshPath, map[string]string{"refresh_token": res.str("refreshToken")}))
}

func TestRefreshRejected(t *testing.T) {
	s, ts := start(t, Options{})
	wantFailure(t, refresh(t, ts, "no-such-token"), http.StatusUnauthorized, "invalid refresh token")
	wantFailure(t, postForm(t, ts, refreshPath, url.Values{}), http.StatusBadRequest, "missing parameter: refresh_token")
	// Rejections by the request rules are neither 400 nor 401, so not counted.
	wantFailure(t, postJSON(t, ts, refreshPath, `{"refresh_token":`), http.StatusBadRequest, "malformed body")
	req := newRequest(t, http.MethodPost, ts.URL+refreshPath, "text/plain", nil)
	wantFailure(t, apiDo(t, ts.Client(), req), http.StatusUnsupportedMediaType, "unsupported content-type: text/plain")
	if st := s.Stats(); st.RefreshCalls != 4 || st.RejectedRefreshes != 3 || st.ReusedRefreshTokens != 0 {
		t.Errorf("stats = %+v, want 4 calls, 3 rejected, no re-use", st)
	}
}

func TestRefreshTokenExpiry(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now, RefreshLifetime: 2 * time.Hour})
	early, late := login(t, ts), login(t, ts)

	clock.Advance(2*time.Hour - time.Nanosecond)
	checkSession(t, refresh(t, ts, early.str("refreshToken")))
	clock.Advance(time.Nanosecond)
	wantFailure(t, refresh(t, ts, late.str("refreshToken")), http.StatusUnauthorized, "refresh token expired")
	if st := s.Stats(); st.RejectedRefreshes != 1 {
		t.Errorf("RejectedRefreshes = %d, want 1", st.RejectedRefreshes)
	}
}

func TestBearerExpiry(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now, TokenLifetime: 10 * time.Minute})
	res := login(t, ts)
	if res.body["tokenLifetime"] != float64(600) {
		t.Errorf("tokenLifetime = %v, want 600", res.body["tokenLifetime"])
	}
	token := res.str("token")

	clock.Advance(10*time.Minute - time.Nanosecond)
	if got := whoami(t, ts, "Bearer "+token); got.status != http.StatusOK {
		t.Errorf("whoami just before expiry: %d %s", got.status, got.raw)
	}
	clock.Advance(time.Nanosecond)
	wantFailure(t, whoami(t, ts, "Bearer "+token), http.StatusUnauthorized, "token expired")
	if s.Live(token) {
		t.Error("Live is true after expiry")
	}
}

func TestTokenLifetimeWholeSeconds(t *testing.T) {
	s, ts := start(t, Options{TokenLifetime: 90*time.Second + 900*time.Millisecond})
	if got := login(t, ts).body["tokenLifetime"]; got != float64(90) {
		t.Errorf("tokenLifetime = %v, want 90", got)
	}
	s.SetTokenLifetime(30 * time.Second)
	if got := login(t, ts).body["tokenLifetime"]; got != float64(30) {
		t.Errorf("after SetTokenLifetime: tokenLifetime = %v, want 30", got)
	}
}

func TestSkew(t *testing.T) {
	// The clock's zone must not leak into the strings, which are UTC.
	zoned := func() time.Time { return t0.In(time.FixedZone("X", 5*3600)) }
	s, ts := start(t, Options{Now: zoned, Skew: -2 * time.Hour, RefreshLifetime: 48 * time.Hour})
	res := login(t, ts)
	if got, want := res.str("tokenExpiration"), "2018-04-02T19:39:12+00:00"; got != want {
		t.Errorf("tokenExpiration = %q, want %q (clock - 2h + 1h)", got, want)
	}
	if got, want := res.str("refreshTokenExpiration"), "2018-04-04T18:39:12+00:00"; got != want {
		t.Errorf("refreshTokenExpiration = %q, want %q (clock - 2h + 48h)", got, want)
	}
	if res.body["tokenLifetime"] != float64(3600) {
		t.Errorf("tokenLifetime = %v, want 3600 whatever the skew", res.body["tokenLifetime"])
	}
	// The reported expiry is in the past, but the real one is not.
	if !s.Live(res.str("token")) {
		t.Error("token not live: skew changed the real expiry")
	}

	s.SetSkew(3 * time.Hour)
	if got, want := login(t, ts).str("tokenExpiration"), "2018-04-03T00:39:12+00:00"; got != want {
		t.Errorf("after SetSkew: tokenExpiration = %q, want %q", got, want)
	}
}

func TestSkewDoesNotShortenLife(t *testing.T) {
	clock := newClock()
	s, ts := start(t, Options{Now: clock.Now, Skew: 5 * time.Hour})
	res := login(t, ts)
	clock.Advance(59 * time.Minute)
	if !s.Live(res.str("token")) {
		t.Error("token dead before its real expiry")
	}
	checkSession(t, refresh(t, ts, res.str("refreshToken")))
}

func TestRevokeAll(t *testing.T) {
	s, ts := start(t, Options{})
	old := login(t, ts)
	s.RevokeAll()

	wantFailure(t, whoami(t, ts, "Bearer "+old.str("token")), http.StatusUnauthorized, "session revoked")
	wantFailure(t, refresh(t, ts, old.str("refreshToken")), http.StatusUnauthorized, "session revoked")
	if s.Live(old.str("token")) {
		t.Error("revoked token is live")
	}
	fresh := login(t, ts)
	if !s.Live(fresh.str("token")) {
		t.Error("a login after RevokeAll is not live")
	}
	checkSession(t, refresh(t, ts, fresh.str("refreshToken")))
}

func TestNewSession(t *testing.T) {
	s, ts := start(t, Options{})
	if _, err := s.NewSession("eve"); err == nil {
		t.Error("NewSession(eve) succeeded for an unknown user")
	}
	refreshToken, err := s.NewSession("demo")
	if err != nil {
		t.Fatal(err)
	}
	res := refresh(t, ts, refreshToken)
	checkSession(t, res)
	me := whoami(t, ts, "Bearer "+res.str("token"))
	if me.status != http.StatusOK || me.str("username") != "demo" || me.str("guid") != res.str("guid") {
		t.Errorf("whoami = %d %s, want demo in session %s", me.status, me.raw, res.str("guid"))
	}
	if st := s.Stats(); st.LoginCalls != 0 || st.Logins != 0 || st.Refreshes != 1 {
		t.Errorf("stats = %+v, want no logins and 1 refresh", st)
	}
}

func TestWhoami(t *testing.T) {
	s, ts := start(t, Options{})
	res := login(t, ts)
	token := res.str("token")

	for _, auth := range []string{"Bearer " + token, "bearer " + token} {
		me := whoami(t, ts, auth)
		if me.status != http.StatusOK || string(me.raw) != `{"guid":"`+res.str("guid")+`","success":true,"username":"demo"}` {
			t.Errorf("whoami(%.7s...) = %d %s", auth, me.status, me.raw)
		}
	}
	wantFailure(t, whoami(t, ts, ""), http.StatusUnauthorized, "missing bearer token")
	wantFailure(t, whoami(t, ts, "Basic ZGVtbzpkZW1vLXBhc3N3b3Jk"), http.StatusUnauthorized, "missing bearer token")
	wantFailure(t, whoami(t, ts, "Bearer "), http.StatusUnauthorized, "missing bearer token")
	wantFailure(t, whoami(t, ts, "Bearer "+res.str("refreshToken")), http.StatusUnauthorized, "invalid token")

	req := newRequest(t, http.MethodPost, ts.URL+whoamiPath, "", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	post := apiDo(t, ts.Client(), req)
	wantFailure(t, post, http.StatusMethodNotAllowed, "method not allowed")
	if post.header.Get("Allow") != http.MethodGet {
		t.Errorf("Allow = %q, want GET", post.header.Get("Allow"))
	}

	if st := s.Stats(); st.ProtectedOK != 2 || st.ProtectedDenied != 4 {
		t.Errorf("ProtectedOK, ProtectedDenied = %d, %d; want 2, 4", st.ProtectedOK, st.ProtectedDenied)
	}
}

func TestTokensDistinct(t *testing.T) {
	_, ts := start(t, Options{})
	seen := make(map[string]bool)
	for range 50 {
		res := login(t, ts)
		for _, name := range []string{"guid", "token", "refreshToken"} {
			v := res.str(name)
			if !uuidShape.MatchString(v) || seen[v] {
				t.Fatalf("%s %q is malformed or seen before", name, v)
			}
			seen[v] = true
		}
	}
}

func TestConcurrentRefreshOneWins(t *testing.T) {
	s, ts := start(t, Options{})
	refreshToken := login(t, ts).str("refreshToken")
	const n = 20
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			res, err := formExchange(ts, refreshPath, url.Values{"refresh_token": {refreshToken}})
			if err != nil {
				t.Error(err)
			}
			statuses <- res.status
		})
	}
	wg.Wait()
	close(statuses)
	ok := 0
	for status := range statuses {
		if status == http.StatusOK {
			ok++
		}
	}
	st := s.Stats()
	if ok != 1 || st.Refreshes != 1 || st.ReusedRefreshTokens != n-1 {
		t.Errorf("%d of %d concurrent refreshes succeeded, stats %+v; want exactly 1", ok, n, st)
	}
}

func TestConcurrentSessions(t *testing.T) {
	s, ts := start(t, Options{})
	const clients, rounds = 8, 3
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			res, err := formExchange(ts, loginPath, url.Values{"username": {"demo"}, "password": {"demo-password"}})
			for range rounds {
				if err != nil {
					break
				}
				res, err = formExchange(ts, refreshPath, url.Values{"refresh_token": {res.str("refreshToken")}})
				_ = s.Stats()
			}
			if err != nil {
				t.Error(err)
				return
			}
			if !s.Live(res.str("token")) {
				t.Errorf("token from the last refresh is not live: %s", res.raw)
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if st.Logins != clients || st.Refreshes != clients*rounds || st.ReusedRefreshTokens != 0 {
		t.Errorf("stats = %+v, want %d logins and %d refreshes", st, clients, clients*rounds)
	}
}

func TestIssuedSecrets(t *testing.T) {
	s, ts := start(t, Options{})
	if got := s.IssuedSecrets(); len(got) != 0 {
		t.Fatalf("secrets before any session: %v", got)
	}
	first := login(t, ts)
	second := refresh(t, ts, first.str("refreshToken"))
	got := strings.Join(s.IssuedSecrets(), " ")
	for _, res := range []result{first, second} {
		for _, field := range []string{"token", "refreshToken", "guid"} {
			if !strings.Contains(got, res.str(field)) {
				t.Errorf("IssuedSecrets lacks the %s %q", field, res.str(field))
			}
		}
	}
}
