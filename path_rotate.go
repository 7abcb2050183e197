package teletracker

import (
	"context"
	"errors"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// pathRotate is rotate for the default account and rotate/<name> for the
// named ones: one handler for both.
func pathRotate(b *backend) []*framework.Path {
	return []*framework.Path{
		b.rotatePath("rotate", "token", nil),
		b.rotatePath("rotate/"+framework.MatchAllRegex("name"), "account-token", map[string]*framework.FieldSchema{"name": nameField}),
	}
}

func (b *backend) rotatePath(pattern, suffix string, fields map[string]*framework.FieldSchema) *framework.Path {
	return &framework.Path{
		Pattern: pattern,
		Fields:  fields,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathRotateWrite,
				Summary:  "Replace the bearer token (and so the refresh token) now.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "rotate",
					OperationSuffix: suffix,
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "OK",
						Fields:      rotateResponseFields,
					}},
				},
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
			},
		},
		HelpSynopsis:    pathRotateHelpSyn,
		HelpDescription: pathRotateHelpDesc,
	}
}

// rotateResponseFields are the fields a rotate returns: never the token.
var rotateResponseFields = map[string]*framework.FieldSchema{
	"expires_at":          tokenResponseFields["expires_at"],
	"last_vault_rotation": tokenResponseFields["last_vault_rotation"],
	"next_vault_rotation": tokenResponseFields["next_vault_rotation"],
}

func (b *backend) pathRotateWrite(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	name, err := nameIn(req.Path, "rotate")
	if err != nil {
		return respond(triggerRotate, err, b.now())
	}
	a, err := b.existing(ctx, req.Storage, name)
	switch {
	case err != nil:
		return nil, err
	case a == nil:
		return nil, errNoAccount(name)
	}
	r, err := a.apply(ctx, req.Storage, trigger{kind: triggerRotate, at: b.now()}, nil)
	if errors.Is(err, errNotConfigured) && name != "" {
		return nil, errNoAccount(name) // deleted meanwhile
	}
	if !succeeded(err) {
		return respond(triggerRotate, err, b.now())
	}
	st := newSnapshot(r, b.now(), b.lastTick())
	resp := &logical.Response{Data: map[string]interface{}{
		"expires_at": st.expiresAtText, "last_vault_rotation": st.lastRotation, "next_vault_rotation": st.nextRotation,
	}}
	if err != nil {
		resp.AddWarning(err.Error())
	}
	return resp, nil
}

const pathRotateHelpSyn = `Replace the Teletracker bearer token now.`

const pathRotateHelpDesc = `
Refreshes the session at once, under the same lock and the same rules as the
engine's own refreshes: the new refresh token is stored before the new token is
served. Returns the new expires_at, last_vault_rotation and next_vault_rotation,
never the token.

Teletracker is never called twice for one mount within 10 seconds, nor
before a Retry-After has passed; a rotate inside those limits is refused with
429 and says when the next call is allowed. (A rotate is an operator's act:
unlike the engine's own attempts it does not wait out the backoff after
failures.) When the refresh token is no longer usable, rotate logs in again
with the stored password; when the session needs re-authentication, rotate is
refused with 400 until config gets a password or refresh_token. While a new
session is held in memory because storage refused it, rotate is refused with
503. When Teletracker refuses the stored refresh token or password, rotate
answers 400, as a config write with a refused credential does; another failed
Teletracker call answers 502 (429 when Teletracker asked to wait).
`
