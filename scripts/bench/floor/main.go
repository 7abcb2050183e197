// Command floor is the benchmark's floor: the least an external, multiplexed
// secrets plugin can do to answer a read. One path, "token", whose read
// returns seven fields from memory, shaped like the Teletracker token read
// (same names, same value types); a write stores the values to return, so
// the benchmark can give it the same sizes as a real token read.
//
// It is written the plain way (plugin.ServeMultiplex, a framework.Backend,
// Operations rather than the deprecated Callbacks), so it pays what every
// such plugin pays: Vault's gRPC hop, and the framework's routing with its
// per-request call back to Vault for the replication state. The engine
// answers token reads before the framework's handling, so token/floor above
// 1 is what that saves.
package main

import (
	"context"
	"os"
	"sync/atomic"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/plugin"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: factory,
		TLSProviderFunc:    api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}

// fieldNames are the token read's fields, in the engine's order.
var fieldNames = [...]string{"token", "token_type", "expires_at", "ttl", "rotation_period", "last_vault_rotation", "next_vault_rotation"}

// values are what a read returns, boxed once, as the engine boxes its own.
type values [len(fieldNames)]any

// backend is one mount of the floor.
type backend struct {
	*framework.Backend
	// current is what reads return; swapped whole by a write.
	current atomic.Pointer[values]
}

func factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := &backend{}
	v := values{"", "Bearer", "", int64(0), int64(0), "", ""}
	b.current.Store(&v)
	b.Backend = &framework.Backend{
		Help:        "The benchmark's floor: one in-memory read.",
		BackendType: logical.TypeLogical,
		Paths: []*framework.Path{{
			Pattern:             "token",
			TakesArbitraryInput: true,
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation:   &framework.PathOperation{Callback: b.read},
				logical.UpdateOperation: &framework.PathOperation{Callback: b.write},
			},
		}},
	}
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// read returns the seven fields from memory in a new map, as the engine does.
func (b *backend) read(context.Context, *logical.Request, *framework.FieldData) (*logical.Response, error) {
	v := b.current.Load()
	data := make(map[string]interface{}, len(fieldNames))
	for i, name := range fieldNames {
		data[name] = v[i]
	}
	return &logical.Response{Data: data}, nil
}

// write stores the values reads return; numbers stay numbers.
func (b *backend) write(_ context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	var v values
	for i, name := range fieldNames {
		v[i] = req.Data[name]
	}
	b.current.Store(&v)
	return nil, nil
}
