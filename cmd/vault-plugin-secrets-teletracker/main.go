// Command vault-plugin-secrets-teletracker serves the Teletracker secrets
// engine to Vault as an external, multiplexed plugin.
package main

import (
	"os"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	teletracker "github.com/teletracker/vault-plugin-secrets-teletracker"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	if err := meta.FlagSet().Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: teletracker.NewFactory(),
		// For Vault versions without plugin AutoMTLS.
		TLSProviderFunc: api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}
