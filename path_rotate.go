package teletracker

import (
	"context"
	"errors"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathRotate(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "rotate",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.UpdateOperation: &framework.PathOperation{
				Callback: b.pathRotateWrite,
				Summary:  "Replace the bearer token (and so the refresh token) now.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "rotate",
					OperationSuffix: "token",
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
	st, err := b.ensure(ctx, req.Storage, triggerRotate)
	var rl *rateLimitedError
	var ue *upstreamError
	switch {
	case errors.Is(err, errNotConfigured) || errors.Is(err, errNoSession) || errors.Is(err, errReauth):
		return logical.ErrorResponse(err.Error()), logical.ErrInvalidRequest
	case errors.As(err, &rl):
		return nil, logical.CodedError(http.StatusTooManyRequests, "rotation refused: "+rl.Error())
	case errors.Is(err, errHeld):
		return nil, logical.CodedError(http.StatusServiceUnavailable, "rotation refused: "+err.Error())
	case errors.As(err, &ue):
		return nil, logical.CodedError(http.StatusBadGateway, "rotation failed: "+err.Error())
	case err != nil && !errors.Is(err, errNotStored):
		return nil, err
	}
	resp := &logical.Response{Data: map[string]interface{}{
		"expires_at":          st.expiresAtText,
		"last_vault_rotation": st.lastRotation,
		"next_vault_rotation": st.nextRotation,
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

Teletracker's /auth/refresh is never called twice for one mount within 10
seconds, nor within 30 seconds of a failed call, nor before a Retry-After has
passed; a rotate inside those limits is refused with 429 and says when the
next call is allowed. When the refresh token has been rejected, rotate logs in
again with the stored password; when the session needs re-authentication,
rotate is refused with 400 until config gets a password or refresh_token.
While a new session is held in memory because storage refused it, rotate is
refused with 503; a failed Teletracker call answers 502.
`
