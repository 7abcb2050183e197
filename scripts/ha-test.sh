#!/usr/bin/env bash
# Run the HA failover test (e2e/ha_test.go, TestHAFailover) alone and
# verbosely, to watch it: a three-node Vault cluster on integrated Raft
# storage on loopback, the engine against the fake Teletracker, readers on
# every node, a step-down and a SIGKILL of the active node. `make test`
# runs the same test with the rest of ./e2e/.
#
# Builds the plugin and the fake as `make e2e` does, and finds or builds
# Vault with scripts/vault.sh. Every node's full log is kept in
# .cache/ha-test/ (replaced on each run). Extra arguments go to `go test`
# (e.g. -count=3). Settings: VERSION (v0.1.0, as the Makefile).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export VERSION=${VERSION:-v0.1.0}

make --no-print-directory build fakett
vault=$(scripts/vault.sh)
logs=$root/.cache/ha-test
rm -rf "$logs"
mkdir -p "$logs"

echo "node logs: $logs"
VAULT_BIN=$vault PLUGIN_BIN=$root/bin/vault-plugin-secrets-teletracker FAKETT_BIN=$root/bin/fakett HA_LOG_DIR=$logs \
  go test -count=1 -timeout 10m -run '^TestHAFailover$' -v "$@" ./e2e/
