package teletracker

import (
	"context"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathMetrics(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "metrics",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathMetricsRead,
				Summary:  "Read the mount's metrics in the Prometheus text format.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "read",
					OperationSuffix: "metrics",
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{Description: "Prometheus text exposition", MediaType: "text/plain"}},
				},
			},
		},
		HelpSynopsis:    pathMetricsHelpSyn,
		HelpDescription: pathMetricsHelpDesc,
	}
}

// pathMetricsRead answers with the raw text exposition, for Prometheus to
// scrape at /v1/<mount>/metrics with a Vault token.
func (b *backend) pathMetricsRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	// An account whose record storage cannot read is degraded, as status
	// says; it fails no other's gauges.
	def, err := b.def().peekRecord(ctx, req.Storage)
	g := mountGauges{def: def, defUnreadable: err != nil || b.def().loadFailed.Load() != nil, now: b.now()}
	g.named, g.unreadable = b.namedRecords(ctx, req.Storage)
	g.needed, g.budget = b.proc.capacity()
	body, contentType, err := b.metrics.expose(g)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{
		logical.HTTPContentType: contentType,
		logical.HTTPRawBody:     body,
		logical.HTTPStatusCode:  http.StatusOK,
	}}, nil
}

const pathMetricsHelpSyn = `Read the mount's metrics in the Prometheus text format.`

const pathMetricsHelpDesc = `
Answers in the Prometheus text exposition format, for Prometheus to scrape
https://<vault>/v1/<mount>/metrics with a Vault token whose policy allows read
on this path. Per mount, with no secret and no label from user input:

  teletracker_state{state}                       1 for the state status reports
  teletracker_token_expires_in_seconds           until the bearer token expires
  teletracker_refresh_token_expires_in_seconds   until the refresh token expires
  teletracker_consecutive_failures               failed attempts since the last success
  teletracker_last_rotation_timestamp_seconds    when the token held was obtained
  teletracker_refreshes_total{outcome}           calls to /auth/refresh
  teletracker_logins_total{outcome}              calls to /auth/login
  teletracker_upstream_request_duration_seconds  histogram of call times, by op
  teletracker_token_reads_total                  token reads answered

Counters start from zero when the plugin starts (a restart, or another node
becoming active); outcome is success, rejected, failed or unknown.
`
