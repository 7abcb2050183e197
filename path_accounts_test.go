package teletracker

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/teletracker/vault-plugin-secrets-teletracker/internal/fakett"
)

// TestBadAccountNamesRefusedOnEveryPath: a name that is not 1 to 64
// characters of a-z, 0-9, - and _ starting with a letter or digit is a 400
// that says what is allowed, on every path that takes a name, for every
// operation; nothing is stored or called.
func TestBadAccountNamesRefusedOnEveryPath(t *testing.T) {
	e := newTestEnv(t)
	bad := []string{strings.Repeat("a", 65), "Fleet-7", "-fleet", "_fleet", ".", "..", "fleet.7", "fleet 7", "fleet/7", "flëet", ""}
	ops := map[string][]logical.Operation{
		"accounts": {logical.ReadOperation, logical.UpdateOperation, logical.CreateOperation, logical.DeleteOperation},
		"token":    {logical.ReadOperation},
		"rotate":   {logical.UpdateOperation},
		"status":   {logical.ReadOperation},
	}
	for prefix, ops := range ops {
		for _, op := range ops {
			for _, name := range bad {
				var data map[string]interface{}
				if prefix == "accounts" && (op == logical.UpdateOperation || op == logical.CreateOperation) {
					data = map[string]interface{}{"base_url": e.url, "username": "demo", "password": "demo-password"}
				}
				resp, err := e.request(op, prefix+"/"+name, data)
				if statusOf(resp, err) != http.StatusBadRequest || resp == nil || !strings.Contains(resp.Error().Error(), "1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit") {
					t.Errorf("%s %s/%q: resp=%v err=%v, want a 400 that says what names are allowed", op, prefix, name, resp, err)
				}
			}
		}
	}
	if st := e.fake.Stats(); st.LoginCalls+st.RefreshCalls != 0 {
		t.Errorf("a bad name called Teletracker: %+v", st)
	}
	if keys, _ := e.storage.List(t.Context(), ""); len(keys) != 0 {
		t.Errorf("a bad name stored %v", keys)
	}
}

// TestLongestAccountNameAccepted: 64 characters, digits first, - and _
// are a name.
func TestLongestAccountNameAccepted(t *testing.T) {
	e := newTestEnv(t)
	for _, name := range []string{strings.Repeat("a", 64), "7fleet", "fleet_7-b", "0"} {
		e.configureAccount(name, nil)
		e.mustRequest(logical.ReadOperation, "token/"+name, nil)
	}
}

// TestUnknownAccountIs404OnEveryPath: a valid name no account has is a 404
// on token/<name>, rotate/<name>, status/<name> and a read of
// accounts/<name>, and the token read does not tell the reader to
// configure the mount; nothing is called, stored or kept in memory.
func TestUnknownAccountIs404OnEveryPath(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configure(nil) // the default account is configured; it is not the one asked for
	before := e.fake.Stats()
	for _, req := range []struct {
		op   logical.Operation
		path string
	}{
		{logical.ReadOperation, "token/nobody"},
		{logical.UpdateOperation, "rotate/nobody"},
		{logical.ReadOperation, "status/nobody"},
	} {
		resp, err := e.request(req.op, req.path, nil)
		if statusOf(resp, err) != http.StatusNotFound || !strings.Contains(err.Error(), `no account named "nobody"`) ||
			strings.Contains(err.Error(), "configure the mount") || strings.Contains(err.Error(), "not configured") {
			t.Errorf("%s %s: resp=%v err=%v, want a 404 naming the account", req.op, req.path, resp, err)
		}
	}
	if resp, err := e.request(logical.ReadOperation, "accounts/nobody", nil); resp != nil || err != nil {
		t.Errorf("read accounts/nobody: resp=%v err=%v, want no answer (Vault's 404)", resp, err)
	}
	if st := e.fake.Stats(); st.LoginCalls+st.RefreshCalls != before.LoginCalls+before.RefreshCalls {
		t.Errorf("an unknown name called Teletracker: %+v", st)
	}
	if keys, _ := e.storage.List(t.Context(), accountsPrefix); len(keys) != 0 {
		t.Errorf("an unknown name stored %v", keys)
	}
	e.b.accountsMu.RLock()
	n := len(e.b.accounts)
	e.b.accountsMu.RUnlock()
	if n != 0 {
		t.Errorf("unknown names left %d accounts in memory", n)
	}
}

// list lists accounts/ with data (after, limit).
func (e *testEnv) list(data map[string]interface{}) (keys []string, info map[string]interface{}) {
	e.t.Helper()
	resp, err := e.handle(e.storage, logical.ListOperation, "accounts/", data)
	if err != nil || resp.IsError() {
		e.t.Fatalf("list: resp=%v err=%v", resp, err)
	}
	if len(resp.Data) == 0 {
		return nil, nil // an empty list, which Vault answers with 404
	}
	resp = e.mustRequest(logical.ListOperation, "accounts/", data) // validated against the declared schema
	keys, _ = resp.Data["keys"].([]string)
	info, _ = resp.Data["key_info"].(map[string]interface{})
	return keys, info
}

// TestAccountsListSortedWithHealth: LIST accounts/ gives the named
// accounts' names sorted, and per name its state, expires_at,
// consecutive_failures and next_attempt_at as status/<name> says them;
// the default account is not listed, nor a deleted one.
func TestAccountsListSortedWithHealth(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configure(nil)
	if keys, _ := e.list(nil); len(keys) != 0 {
		t.Fatalf("listed %v with only the default account configured", keys)
	}
	for _, name := range []string{"zulu", "alpha", "mike", "7-up", "doomed"} {
		e.configureAccount(name, nil)
	}
	e.clock.Add(time.Minute)
	e.fake.Fail("/auth/refresh", 1, fakett.Fault{Status: http.StatusServiceUnavailable})
	_, _ = e.request(logical.UpdateOperation, "rotate/mike", nil) // mike is degraded
	e.mustRequest(logical.DeleteOperation, "accounts/doomed", nil)

	keys, info := e.list(nil)
	if want := []string{"7-up", "alpha", "mike", "zulu"}; !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	if len(info) != len(keys) {
		t.Fatalf("key_info for %d names, keys %d", len(info), len(keys))
	}
	for _, name := range keys {
		got, _ := info[name].(map[string]interface{})
		s := e.mustRequest(logical.ReadOperation, "status/"+name, nil).Data
		for _, f := range []string{"state", "expires_at", "consecutive_failures", "next_attempt_at"} {
			if got[f] != s[f] {
				t.Errorf("%s: key_info %s = %v, status says %v", name, f, got[f], s[f])
			}
		}
	}
	if m := info["mike"].(map[string]interface{}); m["state"] != stateDegraded || m["consecutive_failures"] != 1 || m["next_attempt_at"] == "" {
		t.Errorf("mike failed its refresh, and is listed as %v", m)
	}
	if a := info["alpha"].(map[string]interface{}); a["state"] != stateHealthy || a["expires_at"] != testStart.Add(time.Hour).Format(time.RFC3339) {
		t.Errorf("alpha is listed as %v", a)
	}
}

// TestAccountsListPages: after and limit page through the names in order,
// each name once; after may name no account; limit 0 is all.
func TestAccountsListPages(t *testing.T) {
	e := newTestEnv(t)
	var all []string
	for i := range 7 {
		name := fmt.Sprintf("acct-%02d", i)
		all = append(all, name)
		e.configureAccount(name, nil)
	}
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > len(all) {
			t.Fatalf("paging does not end: %v", got)
		}
		keys, info := e.list(map[string]interface{}{"after": after, "limit": 3})
		if len(keys) > 3 || len(info) != len(keys) {
			t.Fatalf("a page of limit 3 has %d keys, %d key_info", len(keys), len(info))
		}
		if len(keys) == 0 {
			break
		}
		got = append(got, keys...)
		after = keys[len(keys)-1]
	}
	if !slices.Equal(got, all) {
		t.Fatalf("pages gave %v, want %v", got, all)
	}
	if keys, _ := e.list(map[string]interface{}{"after": "acct-02x", "limit": 2}); !slices.Equal(keys, []string{"acct-03", "acct-04"}) {
		t.Fatalf("after a name no account has: %v", keys)
	}
	if keys, _ := e.list(map[string]interface{}{"limit": 0}); !slices.Equal(keys, all) {
		t.Fatalf("limit 0: %v", keys)
	}
	if keys, _ := e.list(map[string]interface{}{"after": "acct-06"}); len(keys) != 0 {
		t.Fatalf("after the last name: %v", keys)
	}
}

// TestAccountsListNegativeLimitRefused: limit < 0 is the caller's mistake.
func TestAccountsListNegativeLimitRefused(t *testing.T) {
	e := newTestEnv(t)
	e.configureAccount("fleet-1", nil)
	resp, err := e.request(logical.ListOperation, "accounts/", map[string]interface{}{"limit": -1})
	if statusOf(resp, err) != http.StatusBadRequest || !strings.Contains(resp.Error().Error(), "limit") {
		t.Fatalf("limit -1: resp=%v err=%v, want 400", resp, err)
	}
}

// TestAccountsListSkipsDeletedOnAPage: a page of limit n holds n accounts
// when accounts were deleted: what was deleted takes no place on it.
func TestAccountsListSkipsDeletedOnAPage(t *testing.T) {
	e := newTestEnv(t)
	for _, name := range []string{"a1", "a2", "a3", "a4"} {
		e.configureAccount(name, nil)
	}
	e.mustRequest(logical.DeleteOperation, "accounts/a1", nil)
	e.mustRequest(logical.DeleteOperation, "accounts/a2", nil)
	if keys, _ := e.list(map[string]interface{}{"limit": 2}); !slices.Equal(keys, []string{"a3", "a4"}) {
		t.Fatalf("first page of 2 after deleting a1 and a2: %v", keys)
	}
}

// TestAccountsListSurvivesOneUnreadableEntry: one account's entry that
// storage cannot read hides no other's health: the LIST answers, that one
// with state unknown and an error.
func TestAccountsListSurvivesOneUnreadableEntry(t *testing.T) {
	e := newTestEnv(t)
	e.ownAccounts()
	e.configureAccount("broken", nil)
	e.configureAccount("fine", nil)
	e.b.invalidate(context.Background(), accountsPrefix+"broken") // its health must be read from storage
	s := keyFaults{Storage: e.storage, fail: func(key string) bool { return key == accountsPrefix+"broken" }}
	resp, err := e.handle(s, logical.ListOperation, "accounts/", nil)
	if err != nil || resp.IsError() {
		t.Fatalf("LIST with broken's entry unreadable: resp=%v err=%v; fine's health is lost with it", resp, err)
	}
	if keys, _ := resp.Data["keys"].([]string); !slices.Contains(keys, "fine") || !slices.Contains(keys, "broken") {
		t.Fatalf("not both listed: %v", resp.Data)
	}
	info := resp.Data["key_info"].(map[string]interface{})
	if b := info["broken"].(map[string]interface{}); b["state"] != "unknown" || b["error"] == nil {
		t.Fatalf("broken's entry: %v", b)
	}
	if f := info["fine"].(map[string]interface{}); f["state"] != stateHealthy {
		t.Fatalf("fine's entry: %v", f)
	}
}
