package teletracker

import (
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
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
