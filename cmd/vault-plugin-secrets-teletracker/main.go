// Command vault-plugin-secrets-teletracker serves the Teletracker secrets
// engine to Vault as an external, multiplexed plugin.
package main

import (
	"fmt"
	"os"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/sdk/plugin"

	teletracker "github.com/teletracker/vault-plugin-secrets-teletracker"
)

func main() {
	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	// vault plugin register -args=-calls-per-second=N raises the budget,
	// where Teletracker grants this client a higher rate limit.
	callsPerSecond := flags.Float64("calls-per-second", teletracker.DefaultCallsPerSecond,
		"at most this many calls a second reach Teletracker, all mounts and accounts of the plugin together")
	if err := flags.Parse(os.Args[1:]); err != nil {
		fatal(err)
	}
	if *callsPerSecond < 1 || *callsPerSecond > 1000 {
		fatal(fmt.Errorf("-calls-per-second must be between 1 and 1000, not %v", *callsPerSecond))
	}
	err := plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: teletracker.NewFactory(*callsPerSecond),
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
