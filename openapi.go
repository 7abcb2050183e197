package teletracker

import (
	"context"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// openapi.go makes the mount's OpenAPI document survive Vault's merge into
// sys/internal/specs/openapi. The framework names each request and response
// body as a component and refers to it with "$ref"; an external plugin's
// document reaches Vault as JSON, which Vault decodes with
// framework.NewOASDocumentFromMap, and that drops every "$ref" (the
// OASSchema field has no mapstructure tag: hashicorp/vault#30714), leaving
// "schema: {}". So the root help, which Vault asks for when it merges,
// carries each body's schema in place of its reference.

// componentRef starts a reference to one of the document's own schemas.
const componentRef = "#/components/schemas/"

// rootHelp is the framework's root help with the references of its OpenAPI
// document resolved.
func (b *backend) rootHelp(ctx context.Context, req *logical.Request) (*logical.Response, error) {
	resp, err := b.Backend.HandleRequest(ctx, req)
	if err != nil || resp == nil {
		return resp, err
	}
	if doc, ok := resp.Data["openapi"].(*framework.OASDocument); ok {
		inlineBodies(doc)
	}
	return resp, nil
}

// inlineBodies puts in doc, in place of each body's reference to a
// component, the component's schema. It changes only what documentPaths made
// for doc: a response the SDK shares between documents is copied first.
func inlineBodies(doc *framework.OASDocument) {
	for _, item := range doc.Paths {
		for _, op := range []*framework.OASOperation{item.Get, item.Post, item.Patch, item.Delete} {
			if op == nil {
				continue
			}
			if op.RequestBody != nil {
				op.RequestBody.Content = inlineContent(doc, op.RequestBody.Content)
			}
			for code, r := range op.Responses {
				inlined := *r
				inlined.Content = inlineContent(doc, r.Content)
				op.Responses[code] = &inlined
			}
		}
	}
}

// inlineContent is c with each media type's schema resolved, if it is a
// reference to one of doc's components.
func inlineContent(doc *framework.OASDocument, c framework.OASContent) framework.OASContent {
	if c == nil {
		return nil
	}
	out := make(framework.OASContent, len(c))
	for mediaType, m := range c {
		resolved := *m
		if m.Schema != nil && strings.HasPrefix(m.Schema.Ref, componentRef) {
			if s, ok := doc.Components.Schemas[strings.TrimPrefix(m.Schema.Ref, componentRef)]; ok {
				resolved.Schema = s
			}
		}
		out[mediaType] = &resolved
	}
	return out
}
