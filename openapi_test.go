package teletracker

import (
	"context"
	"testing"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin/pb"
)

// The root help's OpenAPI document keeps its request and response schemas
// on the way Vault's merge into sys/internal/specs/openapi takes: across the
// plugin boundary (pb's translation), then framework.NewOASDocumentFromMap.
func TestOpenAPIBodiesSurviveVaultsMerge(t *testing.T) {
	e := newTestEnv(t)
	e.sys.PluginEnvironment = &logical.PluginEnvironment{VaultVersion: "1.21.0"}
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.HelpOperation,
		Storage:   e.storage,
		Data:      map[string]interface{}{"requestResponsePrefix": "teletracker"}, // as Vault asks
	})
	if err != nil {
		t.Fatal(err)
	}
	wire, err := pb.LogicalResponseToProtoResponse(resp)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err = pb.ProtoResponseToLogicalResponse(wire); err != nil {
		t.Fatal(err)
	}
	raw, ok := resp.Data["openapi"].(map[string]interface{})
	if !ok {
		t.Fatalf("openapi is %T", resp.Data["openapi"])
	}
	doc, err := framework.NewOASDocumentFromMap(raw)
	if err != nil {
		t.Fatal(err)
	}

	properties := func(c framework.OASContent) map[string]*framework.OASSchema {
		if m := c["application/json"]; m != nil && m.Schema != nil {
			return m.Schema.Properties
		}
		return nil
	}
	bodies := 0
	for path, item := range doc.Paths {
		for _, op := range []*framework.OASOperation{item.Get, item.Post, item.Patch, item.Delete} {
			if op == nil {
				continue
			}
			if op.RequestBody != nil {
				bodies++
				if len(properties(op.RequestBody.Content)) == 0 {
					t.Errorf("%s %s: request body without properties", path, op.OperationID)
				}
			}
			for code, r := range op.Responses {
				if r.Content != nil {
					bodies++
					if len(properties(r.Content)) == 0 {
						t.Errorf("%s %s: %d response without properties", path, op.OperationID, code)
					}
				}
			}
		}
	}
	if bodies == 0 {
		t.Fatal("no bodies in the document")
	}
	if p := properties(doc.Paths["/config"].Post.RequestBody.Content); p["password"] == nil || !p["password"].DisplayAttrs.Sensitive {
		t.Errorf("config's request body %v has no sensitive password", p)
	}
	if p := properties(doc.Paths["/token"].Get.Responses[200].Content); p["token"] == nil || p["expires_at"] == nil {
		t.Errorf("token's response %v lacks token or expires_at", p)
	}
}
