#!/usr/bin/env bash
# Run the engine for real: a Vault dev server on loopback with the plugin
# registered (sha256 and version), enabled at teletracker/ and configured
# against the fake Teletracker, or against the real one when
# TELETRACKER_USERNAME and TELETRACKER_PASSWORD are set.
#
#   scripts/dev.sh start   (make dev)       start, configure, read the token once,
#                                           then wait: Ctrl-C stops everything
#   scripts/dev.sh stop    (make dev-stop)  stop everything start started, by PID
#
# Expects bin/ to hold the plugin and the fake (make dev builds them first).
# Settings: VAULT_DEV_PORT (8200), VERSION (from the Makefile),
# TELETRACKER_BASE_URL, TELETRACKER_ACCOUNT_ID.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=$root/.cache/dev
port=${VAULT_DEV_PORT:-8200}
version=${VERSION:?VERSION is set by the Makefile}
plugin=vault-plugin-secrets-teletracker

stop() {
  local stopped=0
  for name in vault fakett; do
    local pidfile=$state/$name.pid
    [ -f "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    # Each was started as the leader of its own process group: the group
    # takes Vault's plugin processes with it.
    if kill -TERM -- "-$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "stopped $name (pid $pid)"
      stopped=1
    fi
    rm -f "$pidfile"
  done
  [ "$stopped" = 1 ] || echo "nothing was running"
}

start() {
  if [ -f "$state/vault.pid" ] && kill -0 "$(cat "$state/vault.pid")" 2>/dev/null; then
    echo "already running; 'make dev-stop' first" >&2
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; set VAULT_DEV_PORT to another" >&2
    exit 1
  fi
  local vault
  vault=$("$root/scripts/vault.sh")
  rm -rf "$state"
  mkdir -p "$state/plugins"
  cp "$root/bin/$plugin" "$state/plugins/$plugin"
  trap 'echo "start failed; stopping what started (logs in $state)" >&2; stop' ERR

  local base_url username password
  if [ -n "${TELETRACKER_USERNAME:-}" ] && [ -n "${TELETRACKER_PASSWORD:-}" ]; then
    base_url=${TELETRACKER_BASE_URL:-https://api.teletracker.net}
    username=$TELETRACKER_USERNAME
    password=$TELETRACKER_PASSWORD
    echo "using the real Teletracker at $base_url as $username"
  else
    setsid "$root/bin/fakett" -addr 127.0.0.1:0 -addr-file "$state/fakett.addr" >"$state/fakett.log" 2>&1 &
    echo $! >"$state/fakett.pid"
    for _ in $(seq 1 50); do [ -s "$state/fakett.addr" ] && break; sleep 0.1; done
    base_url=$(cat "$state/fakett.addr")
    username=demo
    password=demo-password
    echo "fake Teletracker at $base_url (user demo)"
  fi

  export VAULT_ADDR=http://127.0.0.1:$port VAULT_TOKEN=root
  HOME=$state setsid "$vault" server -dev -dev-root-token-id=root \
    -dev-listen-address="127.0.0.1:$port" -dev-plugin-dir="$state/plugins" >"$state/vault.log" 2>&1 &
  echo $! >"$state/vault.pid"
  for _ in $(seq 1 100); do "$vault" status >/dev/null 2>&1 && break; sleep 0.2; done
  echo "vault dev server at $VAULT_ADDR (log: $state/vault.log)"

  local sha
  sha=$(sha256sum "$state/plugins/$plugin" | cut -d' ' -f1)
  "$vault" plugin register -sha256="$sha" -version="$version" -command="$plugin" secret teletracker
  "$vault" secrets enable -path=teletracker -plugin-version="$version" teletracker
  # The password goes on stdin (password=-), never on a command line.
  local args=("base_url=$base_url" "username=$username" "password=-")
  [ -n "${TELETRACKER_ACCOUNT_ID:-}" ] && args+=("account_id=$TELETRACKER_ACCOUNT_ID")
  printf '%s' "$password" | "$vault" write teletracker/config "${args[@]}"
  "$vault" read teletracker/token
  trap - ERR

  cat <<EOF

The engine is running. In another shell:

  export PATH="$(dirname "$vault"):\$PATH" VAULT_ADDR=$VAULT_ADDR VAULT_TOKEN=root
  vault read teletracker/token
  vault read teletracker/status
  vault write -f teletracker/rotate

Stop everything with Ctrl-C here, or with: make dev-stop
EOF
  trap 'echo; stop; exit 0' INT TERM
  local pid
  pid=$(cat "$state/vault.pid")
  while kill -0 "$pid" 2>/dev/null; do sleep 1; done
  stop >/dev/null
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
