package teletracker

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// account.go holds one Teletracker session of a mount, what a whole mount
// was before v0.3.0: its record, its refresh lock, its snapshot, its held
// record and its floor. A mount holds its default account (no name, at
// recordKey, served at config, token, rotate and status) and any number of
// named ones (at accountsPrefix+name, served at accounts/<name>,
// token/<name>, rotate/<name> and status/<name>). Nothing else is kept per
// account: no goroutine, timer, HTTP client or metrics object.

const (
	// accountsPrefix is where named accounts' records are stored.
	accountsPrefix = "accounts/"
	// maxAccountName is the longest account name.
	maxAccountName = 64
)

// accountNameRE is what an account name may be.
var accountNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// account is one session of a mount.
type account struct {
	// m is the mount that holds it.
	m *backend
	// name is empty for the default account.
	name string
	// key is the storage key of its record.
	key string

	// refreshMu is the account's refresh lock: every call, every write.
	refreshMu sync.Mutex
	// lastCall is when this process's last call to Teletracker for the
	// account began, then ended, on mono; guarded by refreshMu.
	lastCall time.Time
	// held is a record storage refused, until stored; written under refreshMu.
	held atomic.Pointer[record]
	// gone is what stays of a deleted named account in memory (its waits),
	// until they are over; written under refreshMu.
	gone atomic.Pointer[record]
	// forgotten is set, under refreshMu, once the mount dropped the account
	// (forget): whoever still holds it hands its work to the name's account
	// now, and the schedule takes it no more.
	forgotten atomic.Bool
	// snap is what reads are answered from; nil until loaded and after Invalidate.
	snap atomic.Pointer[snapshot]
	// epoch counts invalidations: a copy loaded before one is not published.
	epoch atomic.Uint64
	// need is the calls a second the account needs (capacity.go); under refreshMu.
	need float64
	// loadFailed is the last failure to read its record from storage, until
	// a read succeeds: status tells it.
	loadFailed atomic.Pointer[loadFailure]

	// dueAt is when a tick next has work for it, and index its place in
	// the mount's schedule (schedule.go), -1 when not in it; guarded by the
	// schedule's lock.
	dueAt time.Time
	index int
}

// loadFailure is a failed read of an account's record.
type loadFailure struct {
	at  time.Time
	err string
}

// checkAccountName says what is wrong with name as an account name.
func checkAccountName(name string) error {
	if len(name) > maxAccountName || !accountNameRE.MatchString(name) {
		return invalid("account names are 1 to %d characters of a-z, 0-9, - and _, starting with a letter or digit; %q is not one", maxAccountName, name)
	}
	return nil
}

// accountKey is the storage key of the named account's record.
func accountKey(name string) string {
	if name == "" {
		return recordKey
	}
	return accountsPrefix + name
}

// errNoAccount is the answer for a name no account has.
func errNoAccount(name string) error {
	return logical.CodedError(http.StatusNotFound, fmt.Sprintf("no account named %q: write its config to accounts/%s first", name, name))
}

// nameIn is the account name a request to path asks for under prefix
// ("token", "accounts", ...): "" for prefix itself, the default account,
// and else what follows prefix and a slash, checked. named says whether a
// name was given (an empty one is an error).
func nameIn(path, prefix string) (name string, err error) {
	if path == prefix {
		return "", nil
	}
	name = strings.TrimPrefix(path, prefix+"/")
	return name, checkAccountName(name)
}

// def is the mount's default account.
func (b *backend) def() *account {
	return b.defAccount
}

// account is the account named name (the default for ""), made in memory
// if need be: its record is loaded from storage when first used.
func (b *backend) account(name string) *account {
	if name == "" {
		return b.defAccount
	}
	b.accountsMu.RLock()
	a := b.accounts[name]
	b.accountsMu.RUnlock()
	if a != nil {
		return a
	}
	b.accountsMu.Lock()
	defer b.accountsMu.Unlock()
	if a = b.accounts[name]; a == nil {
		a = newAccount(b, name)
		b.accounts[name] = a
	}
	return a
}

// existing is the account named name when it has a config (in memory or
// in storage), else nil: a request for an unknown name makes nothing.
func (b *backend) existing(ctx context.Context, storage logical.Storage, name string) (*account, error) {
	if name == "" {
		return b.defAccount, nil
	}
	b.accountsMu.RLock()
	a := b.accounts[name]
	b.accountsMu.RUnlock()
	if a != nil {
		if r, err := a.peekRecord(ctx, storage); err != nil || r.configured() {
			return a, err
		}
		return nil, nil
	}
	r, _, err := getRecord(ctx, storage, accountKey(name))
	if err != nil || !r.configured() {
		return nil, err
	}
	return b.account(name), nil
}

// forget drops a from the mount's memory once it is deleted and its waits
// are over. Under a's refreshMu.
func (b *backend) forget(a *account) {
	if a.name == "" {
		return
	}
	a.forgotten.Store(true)
	b.accountsMu.Lock()
	if b.accounts[a.name] == a {
		delete(b.accounts, a.name)
	}
	b.accountsMu.Unlock()
	b.sched.remove(a)
}

func newAccount(b *backend, name string) *account {
	return &account{m: b, name: name, key: accountKey(name), index: -1}
}

// peekRecord is the record as this node knows it, without the refresh lock:
// the held one, else the snapshot's, else the stored one.
func (a *account) peekRecord(ctx context.Context, storage logical.Storage) (*record, error) {
	if r := a.held.Load(); r != nil {
		return r, nil
	}
	if snap := a.snap.Load(); snap != nil {
		return snap.rec, nil
	}
	r, _, err := getRecord(ctx, storage, a.key)
	return r, err
}

// namedRecords is the records of the named accounts this node holds in
// memory (on the active node, all of them), by name, each as peekRecord
// gives it, and the names of those whose record storage could not read
// (now, or at the last try under its lock).
func (b *backend) namedRecords(ctx context.Context, storage logical.Storage) (map[string]*record, []string) {
	b.accountsMu.RLock()
	accounts := slices.Collect(maps.Values(b.accounts))
	b.accountsMu.RUnlock()
	records := make(map[string]*record, len(accounts))
	var unreadable []string
	for _, a := range accounts {
		switch r, err := a.peekRecord(ctx, storage); {
		case err != nil, a.loadFailed.Load() != nil: // as status says
			unreadable = append(unreadable, a.name)
		case r.configured():
			records[a.name] = r
		}
	}
	return records, unreadable
}
