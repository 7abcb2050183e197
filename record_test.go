package teletracker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// A v0.1.0 session with a refresh pending (sent just now by a v0.1.0 node
// that stopped) migrates to in_flight with the marker's waits: its refresh
// token is not sent again while the first call may still be under way.
func TestMigratedPendingRefreshWaitsForItsCall(t *testing.T) {
	e := newTestEnv(t)
	e.defaultOnly() // v0.1.0 had one account
	rt := mustSession(t, e.fake)
	cfg := config{BaseURL: e.url, Username: "demo", RefreshMargin: defaultRefreshMargin, RequestTimeout: 30 * time.Second}
	cfgJSON, _ := json.Marshal(cfg)
	session := fmt.Sprintf(`{"identity":%q,"token":"tok","refresh_token":%q,"lifetime":3600000000000,"obtained_at":"2026-03-01T11:10:00Z","last_refresh_at":"2026-03-01T11:10:00Z","pending":{"generation":1,"started_at":"2026-03-01T12:00:00Z"}}`, cfg.identity(), rt)
	for key, value := range map[string]string{legacyConfigKey: string(cfgJSON), legacySessionKey: session} {
		if err := e.storage.Put(context.Background(), &logical.StorageEntry{Key: key, Value: []byte(value)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Second)
	_ = e.tick()
	if got := e.fake.Stats().RefreshCalls; got != 0 {
		t.Fatalf("the pending refresh's token was sent again 1 s after the v0.1.0 node sent it (request_timeout 30 s)")
	}
}

// TestMigrationFromV010: a mount written by v0.1.0 (config and session
// apart) is read once, stored as one record, and served without a call.
func TestMigrationFromV010(t *testing.T) {
	(&testEnv{t: t, name: testAccount}).defaultOnly() // v0.1.0 had one account
	cases := []struct {
		name    string
		session string // the v0.1.0 session entry, %q the identity
		state   string
		token   bool
	}{
		{"healthy", `{"identity":%q,"token":"tok","refresh_token":"rt","lifetime":3600000000000,"obtained_at":"2026-03-01T11:50:00Z","generation":3,"refresh_count":2}`, stateReady, true},
		{"interrupted", `{"identity":%q,"token":"tok","refresh_token":"rt","lifetime":3600000000000,"obtained_at":"2026-03-01T11:50:00Z","pending":{"generation":1,"started_at":"2026-03-01T11:59:00Z"}}`, stateInFlight, true},
		{"rejected", `{"identity":%q,"token":"tok","lifetime":3600000000000,"obtained_at":"2026-03-01T11:50:00Z","refresh_rejected":true}`, stateNeedLogin, true},
		{"reauth", `{"identity":%q,"reauth_required":true,"refresh_rejected":true}`, stateNeedReauth, false},
		{"foreign", `{"identity":"https://elsewhere \"demo\" 0","token":"tok"}`, stateNeedLogin, false},
		{"no session", ``, stateNeedLogin, false},
		{"backing off", `{"identity":%q,"token":"tok","refresh_token":"rt","lifetime":3600000000000,"obtained_at":"2026-03-01T11:50:00Z","consecutive_failures":2,"last_refresh_at":"2026-03-01T11:59:30Z","last_error_at":"2026-03-01T11:59:30Z","next_attempt_at":"2026-03-01T12:04:00Z","retry_after_until":"2026-03-01T12:02:00Z"}`, stateReady, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			cfg := config{BaseURL: e.url, Username: "demo", Password: "demo-password", RefreshMargin: defaultRefreshMargin, RequestTimeout: defaultRequestTimeout}
			put := func(key, value string) {
				if err := e.storage.Put(context.Background(), &logical.StorageEntry{Key: key, Value: []byte(value)}); err != nil {
					t.Fatal(err)
				}
			}
			cfgJSON, _ := json.Marshal(cfg)
			put(legacyConfigKey, string(cfgJSON))
			if tc.session != "" {
				if strings.Contains(tc.session, "%q") {
					tc.session = fmt.Sprintf(tc.session, cfg.identity())
				}
				put(legacySessionKey, tc.session)
			}
			if err := e.b.Initialize(context.Background(), &logical.InitializationRequest{Storage: e.storage}); err != nil {
				t.Fatal(err)
			}
			r := e.stored()
			if r == nil || r.State != tc.state || (r.Token == "tok") != tc.token || r.Config != cfg {
				t.Fatalf("migrated record %+v, want state %s", r, tc.state)
			}
			if tc.name == "backing off" && (r.Failures != 2 || !r.NotBefore.Equal(testStart.Add(4*time.Minute)) || !r.HoldUntil.Equal(testStart.Add(2*time.Minute))) {
				t.Fatalf("the waits were not carried over: %+v", r)
			}
			for _, key := range []string{legacyConfigKey, legacySessionKey} {
				if entry, _ := e.storage.Get(context.Background(), key); entry != nil {
					t.Fatalf("%s left behind", key)
				}
			}
			if tc.token {
				if got := e.readToken().Data["token"]; got != "tok" {
					t.Fatalf("read %v after the migration", got)
				}
			}
			if got := e.fake.Stats().RefreshCalls + e.fake.Stats().LoginCalls; got != 0 {
				t.Fatalf("the migration called Teletracker %d times", got)
			}
		})
	}
}

// A record written before v0.3.0 may hold Teletracker's own text, echoing a
// secret, in its last error (an earlier version only redacted it): status
// does not show it, and the record stored again marks its text as this
// version's.
func TestEarlierVersionsLastErrorNotShown(t *testing.T) {
	e := newTestEnv(t)
	e.configure(nil)
	r := e.stored()
	echo := "teletracker said: invalid refresh token " + r.RefreshToken
	r.LastError, r.LastErrorAt, r.LastErrorVetted = echo, e.clock.Now(), false
	entry, err := logical.StorageEntryJSON(accountKey(e.name), r) // as v0.2.0 wrote it
	if err != nil {
		t.Fatal(err)
	}
	if err := e.storage.Put(context.Background(), entry); err != nil {
		t.Fatal(err)
	}
	e.b.Invalidate(context.Background(), accountKey(e.name))
	if got := e.status()["last_error"]; got != earlierErrorText {
		t.Fatalf("status last_error = %q, want %q", got, earlierErrorText)
	}
	e.clock.Add(time.Hour) // due: the tick refreshes and stores the record again
	if err := e.tick(); err != nil {
		t.Fatal(err)
	}
	if got := e.stored(); !got.LastErrorVetted || strings.Contains(got.LastError, r.RefreshToken) {
		t.Fatalf("stored again: vetted %v, last_error %q", got.LastErrorVetted, got.LastError)
	}
	e.checkNoSecretsLogged()
}
