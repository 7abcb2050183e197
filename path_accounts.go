package teletracker

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// path_accounts.go lists the mount's named accounts with the health of
// each, so that `vault list -detailed -format=json teletracker/accounts`
// shows a whole fleet in one request. Each account's own paths (accounts/<name>,
// token/<name>, rotate/<name>, status/<name>) are served by the handlers
// of the default account's.

func pathAccounts(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "accounts/?$",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Fields: map[string]*framework.FieldSchema{
			"after": {
				Type:        framework.TypeString,
				Description: "List only the names that sort after this one, for the next page.",
				Query:       true,
			},
			"limit": {
				Type:        framework.TypeInt,
				Description: "List at most this many names (0: all).",
				Query:       true,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ListOperation: &framework.PathOperation{
				Callback: b.pathAccountsList,
				Summary:  "List the named accounts, with the health of each.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "list",
					OperationSuffix: "accounts",
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "OK",
						Fields: map[string]*framework.FieldSchema{
							"keys":     {Type: framework.TypeStringSlice, Required: true, Description: "The account names, sorted."},
							"key_info": {Type: framework.TypeMap, Required: true, Description: "Per name: state, expires_at, consecutive_failures, next_attempt_at; state unknown and error for one whose record could not be read."},
						},
					}},
				},
			},
		},
		HelpSynopsis:    pathAccountsHelpSyn,
		HelpDescription: pathAccountsHelpDesc,
	}
}

func (b *backend) pathAccountsList(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	after, limit := d.Get("after").(string), d.Get("limit").(int)
	if limit < 0 {
		return respond(triggerRead, invalid("limit must not be negative"), b.now())
	}
	names, err := req.Storage.List(ctx, accountsPrefix)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	if after != "" {
		i, _ := slices.BinarySearch(names, after)
		if i < len(names) && names[i] == after {
			i++
		}
		names = names[i:]
	}
	now := b.now()
	keys := []string{}
	info := map[string]interface{}{}
	for _, name := range names {
		if limit > 0 && len(keys) == limit {
			break
		}
		if strings.Contains(name, "/") || checkAccountName(name) != nil {
			continue
		}
		a := b.account(name)
		r, err := a.peekRecord(ctx, req.Storage)
		if err != nil {
			// One account's unreadable entry hides no other's health; its
			// own is "unknown", with why.
			keys = append(keys, name)
			info[name] = map[string]interface{}{"state": "unknown", "expires_at": nil, "consecutive_failures": nil,
				"next_attempt_at": nil, "error": "reading its record failed: " + err.Error()}
			continue
		}
		if !r.configured() {
			continue // deleted meanwhile
		}
		s := a.statusData(r, now)
		keys = append(keys, name)
		info[name] = map[string]interface{}{
			"state":                s["state"],
			"expires_at":           s["expires_at"],
			"consecutive_failures": s["consecutive_failures"],
			"next_attempt_at":      s["next_attempt_at"],
		}
	}
	return logical.ListResponseWithInfo(keys, info), nil
}

const pathAccountsHelpSyn = `List the mount's named accounts, with the health of each.`

const pathAccountsHelpDesc = `
keys are the names of the named accounts, sorted; key_info holds, per name,
its state (healthy, degraded, reauth_required), expires_at,
consecutive_failures and next_attempt_at, as status/<name> reports them;
an account whose record could not be read has state unknown and an error,
and the others are listed all the same.
The default account (config, token, rotate, status) is not listed.

For very large sets, page with limit and after (query parameters of the
LIST; the CLI's "vault read" sends them, with list=true): the next page
starts after the last name of this one, e.g.

  vault read -format=json teletracker/accounts/ list=true limit=1000
  vault read -format=json teletracker/accounts/ list=true limit=1000 after=<last name>
`
