#!/usr/bin/env bash
# Print the path of a Vault binary, building one if there is none.
#
# Uses `vault` from PATH when it is version 1.15 or later. Otherwise builds
# Vault from the Go module github.com/hashicorp/vault@$VAULT_VERSION in a
# module of its own under the cache dir (once; later calls reuse it).
# Progress goes to stderr; stdout carries only the path.
set -euo pipefail

VAULT_VERSION=${VAULT_VERSION:-v1.21.0}
CACHE_DIR=${TELETRACKER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-teletracker}
build_dir=$CACHE_DIR/vault-$VAULT_VERSION
bin=$build_dir/vault

if [ -z "${VAULT_FORCE_BUILD:-}" ] && command -v vault >/dev/null 2>&1; then
  have=$(vault version 2>/dev/null | sed -n 's/^Vault v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  if [ -n "$have" ]; then
    read -r major minor <<<"$have"
    if [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 15 ]; }; then
      command -v vault
      exit 0
    fi
  fi
  echo "vault.sh: vault on PATH is older than 1.15; building $VAULT_VERSION" >&2
fi

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$build_dir"
# One builder at a time: make test and make dev may start together.
exec 9>"$build_dir/.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

echo "vault.sh: building Vault $VAULT_VERSION into $build_dir (takes several minutes, once)" >&2
cd "$build_dir"
cat >main.go <<'GO'
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() { os.Exit(command.Run(os.Args[1:])) }
GO
if [ ! -f go.mod ]; then
  go mod init vaultbin >/dev/null 2>&1
fi
log=$build_dir/build.log
echo "vault.sh: downloading modules (log: $log)" >&2
start=$(date +%s)
if ! { GOFLAGS=-mod=mod go get "github.com/hashicorp/vault@$VAULT_VERSION" &&
       GOFLAGS=-mod=mod go mod tidy; } >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "vault.sh: module download failed" >&2
  exit 1
fi
echo "vault.sh: compiling (the slow part)" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o vault.tmp . >>"$log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 30
  kill -0 "$pid" 2>/dev/null && echo "vault.sh: still compiling ($(( $(date +%s) - start ))s)" >&2
done
if ! wait "$pid"; then
  tail -20 "$log" >&2
  echo "vault.sh: build failed" >&2
  exit 1
fi
mv vault.tmp vault
echo "vault.sh: built $("$bin" version) in $(( $(date +%s) - start ))s" >&2
echo "$bin"
