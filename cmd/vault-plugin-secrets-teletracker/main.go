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
	meta, callsPerSecond, err := parseArgs(os.Args[1:])
	if err != nil {
		fatal(err)
	}
	err = plugin.ServeMultiplex(&plugin.ServeOpts{
		BackendFactoryFunc: teletracker.NewFactory(callsPerSecond),
		// For Vault versions without plugin AutoMTLS.
		TLSProviderFunc: api.VaultPluginTLSProvider(meta.GetTLSConfig()),
	})
	if err != nil {
		fatal(err)
	}
}

// parseArgs parses the plugin's arguments: Vault's own, and
// -calls-per-second, which vault plugin register -args=-calls-per-second=N
// raises where Teletracker grants this client a higher rate limit.
func parseArgs(args []string) (*api.PluginAPIClientMeta, float64, error) {
	meta := &api.PluginAPIClientMeta{}
	flags := meta.FlagSet()
	callsPerSecond := flags.Float64("calls-per-second", teletracker.DefaultCallsPerSecond,
		"at most this many calls a second reach Teletracker, all mounts and accounts of the plugin together")
	if err := flags.Parse(args); err != nil {
		return nil, 0, err
	}
	if err := teletracker.CheckCallsPerSecond(*callsPerSecond); err != nil {
		return nil, 0, err
	}
	return meta, *callsPerSecond, nil
}

func fatal(err error) {
	hclog.New(&hclog.LoggerOptions{}).Error("plugin shutting down", "error", err)
	os.Exit(1)
}
