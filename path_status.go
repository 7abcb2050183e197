package teletracker

import (
	"context"
	"net/http"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathStatus is status for the default account and status/<name> for the
// named ones: one handler for both.
func pathStatus(b *backend) []*framework.Path {
	return []*framework.Path{
		b.statusPath("status", "status", nil),
		b.statusPath("status/"+framework.MatchAllRegex("name"), "account-status", map[string]*framework.FieldSchema{"name": nameField}),
	}
}

func (b *backend) statusPath(pattern, suffix string, fields map[string]*framework.FieldSchema) *framework.Path {
	return &framework.Path{
		Pattern: pattern,
		Fields:  fields,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathStatusRead,
				Summary:  "Report the health of an account's Teletracker session.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "read",
					OperationSuffix: suffix,
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "OK",
						Fields:      statusResponseFields,
					}},
				},
			},
		},
		HelpSynopsis:    pathStatusHelpSyn,
		HelpDescription: pathStatusHelpDesc,
	}
}

// statusResponseFields are the fields a status read returns; times are RFC
// 3339, or empty when unknown.
var statusResponseFields = map[string]*framework.FieldSchema{
	"state":                    {Type: framework.TypeString, Required: true, Description: "unconfigured, healthy, degraded or reauth_required."},
	"expires_at":               {Type: framework.TypeString, Required: true, Description: "When the bearer token expires."},
	"refresh_token_expires_at": {Type: framework.TypeString, Required: true, Description: "When the refresh token expires on Vault's clock; empty if Teletracker did not say."},
	"last_vault_rotation":      {Type: framework.TypeString, Required: true, Description: "When the current token was obtained."},
	"next_vault_rotation":      {Type: framework.TypeString, Required: true, Description: "When the token is due for replacement."},
	"next_attempt_at":          {Type: framework.TypeString, Required: true, Description: "While degraded: when the engine tries again (the tick at or after the wait); empty otherwise."},
	"token_valid":              {Type: framework.TypeBool, Required: true, Description: "Whether the engine holds a token it serves (token reads succeed)."},
	"last_error":               {Type: framework.TypeString, Required: true, Description: "The most recent failure; kept after recovery (consecutive_failures says whether it is current)."},
	"last_error_at":            {Type: framework.TypeString, Required: true, Description: "When it happened."},
	"consecutive_failures":     {Type: framework.TypeInt, Required: true, Description: "Failed calls since the last success."},
	"refresh_count":            {Type: framework.TypeInt64, Required: true, Description: "Successful refreshes since the mount was configured."},
	"unsaved":                  {Type: framework.TypeBool, Required: true, Description: "A new session is held in memory because storage refused it."},
	"calls_per_second_needed":  {Type: framework.TypeFloat, Required: true, Description: "Calls a second all accounts of the plugin process need to keep their sessions (one a rotation)."},
	"calls_per_second_budget":  {Type: framework.TypeFloat, Required: true, Description: "Calls a second the plugin process's turns give; above it, sessions run out before they are refreshed."},
}

func (b *backend) pathStatusRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	name, err := nameIn(req.Path, "status")
	if err != nil {
		return respond(triggerRead, err, b.now())
	}
	a, err := b.existing(ctx, req.Storage, name)
	switch {
	case err != nil:
		return nil, err
	case a == nil && name != "":
		return nil, errNoAccount(name)
	case a == nil:
		a = b.def()
	}
	r, err := a.peekRecord(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: a.statusData(r, b.now())}, nil
}

// statusData is what status says of a, whose record is r, at now. A record
// storage cannot give back is a failure too: nothing can be refreshed.
func (a *account) statusData(r *record, now time.Time) map[string]interface{} {
	b := a.m
	state, nextAttempt := stateUnconfigured, time.Time{}
	lastError, lastErrorAt := "", time.Time{}
	if r.configured() {
		state = r.health(now)
		lastError, lastErrorAt = r.LastError, r.LastErrorAt
		act := decide(r, now, trigger{kind: triggerTick})
		if lf := a.loadFailed.Load(); lf != nil && state != stateReauthRequired {
			state, act = stateDegraded, action{kind: actRefresh} // the next tick reads it again
			lastError, lastErrorAt = "reading the record from storage failed: "+lf.err, lf.at
		}
		if state == stateDegraded {
			nextAttempt = attemptAt(act, now, b.lastTick())
		}
	} else {
		r = &record{}
	}
	tl := r.timeline()
	needed, budget := b.proc.capacity()
	return map[string]interface{}{
		"state":                    state,
		"expires_at":               timeText(tl.expires),
		"refresh_token_expires_at": timeText(r.RefreshTokenExpiresAt),
		"last_vault_rotation":      timeText(tl.obtained),
		"next_vault_rotation":      timeText(tl.due),
		"next_attempt_at":          timeText(nextAttempt),
		"token_valid":              tl.served(now),
		"last_error":               lastError,
		"last_error_at":            timeText(lastErrorAt),
		"consecutive_failures":     r.Failures,
		"refresh_count":            r.RefreshCount,
		"unsaved":                  r.unsaved,
		"calls_per_second_needed":  needed,
		"calls_per_second_budget":  budget,
	}
}

// timeText is t in RFC 3339, or empty when t is zero.
func timeText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

const pathStatusHelpSyn = `Report the health of the mount's Teletracker session, without secrets.`

const pathStatusHelpDesc = `
state is one of:
  unconfigured     nothing written to config yet
  healthy          the token is refreshed on schedule
  degraded         refreshes fail, a login is due, a refresh's outcome is
                   being resolved, or the record is held in memory because
                   storage refused it; the token is served while it is
                   valid (see last_error, next_attempt_at, unsaved)
  reauth_required  only a new credential can help: the refresh token is
                   gone and no password is stored, or the stored password
                   was rejected. Write password or refresh_token to config.

token_valid says whether token reads succeed now (a degraded mount whose
token has expired fails them). The other fields give the token's and the
refresh token's expiry on Vault's clock, the rotation times, the last error
and the failure and refresh counts.
`
