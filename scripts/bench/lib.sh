# Shared by run.sh (make bench) and scale.sh (make bench-scale), which source
# it after setting root (the repository) and bench (their name in messages).
#
# It makes the work directory $state and arranges that every process started
# with `start` is stopped by its process group on exit, failure or Ctrl-C;
# $state is removed on success and kept, with the logs, on failure.

state=$(mktemp -d "${TMPDIR:-/tmp}/teletracker-$bench.XXXXXX")
leaders=() # pids of the process groups started here

log() { echo "$bench: $*" >&2; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${leaders[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${leaders[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  if [ "$rc" = 0 ]; then
    rm -rf "$state"
  else
    log "failed (exit $rc); logs kept in $state"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD as the leader of a new process group.
start() {
  local name=$1
  shift
  setsid "$@" >"$state/$name.log" 2>&1 &
  leaders+=($!)
}

# wait_for DESC CMD...: retry CMD for up to 20 s.
wait_for() {
  local desc=$1
  shift
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $desc"
  return 1
}

# fake NAME [ARGS]: start a fake Teletracker; its URL goes to $url. (Not
# run in a command substitution: that subshell would keep leaders to itself.)
fake() {
  local name=$1
  shift
  start "$name" "$root/bin/fakett" -addr 127.0.0.1:0 -addr-file "$state/$name.addr" "$@"
  wait_for "$name" test -s "$state/$name.addr"
  url=$(cat "$state/$name.addr")
}

# free_port FIRST: the first of 20 ports from FIRST that nothing listens on.
free_port() {
  local port=$1
  for _ in $(seq 1 20); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    port=$((port + 1))
  done
  echo "$port"
}

# start_vault [ARGS]: a Vault dev server on the first free port from
# BENCH_VAULT_PORT (8230), with its plugins in $state/plugins and ARGS
# added; exports VAULT_ADDR and VAULT_TOKEN and sets vault_pid.
start_vault() {
  local port
  port=$(free_port "${BENCH_VAULT_PORT:-8230}")
  export VAULT_ADDR=http://127.0.0.1:$port VAULT_TOKEN=root
  mkdir -p "$state/home"
  HOME=$state/home start vault "$vault" server -dev -dev-root-token-id=root \
    -dev-listen-address="127.0.0.1:$port" -dev-plugin-dir="$state/plugins" "$@"
  vault_pid=${leaders[-1]}
  wait_for "vault at $VAULT_ADDR" "$vault" status
}

# child COMMAND: the pid of Vault's child process running COMMAND.
child() {
  local p
  for p in $(pgrep -P "$vault_pid"); do
    if tr '\0' '\n' <"/proc/$p/cmdline" | head -1 | grep -q "/$1\$"; then
      echo "$p"
      return 0
    fi
  done
  log "no process $1 under Vault (pid $vault_pid)"
  return 1
}

# engine_changes: the Go files outside scripts/bench and e2e that differ from
# the commit, which the measured plugin was built with.
engine_changes() {
  local changed
  changed=$(git -C "$root" status --porcelain -- '*.go' ':!scripts/bench' ':!e2e' | awk '{print $2}' | paste -sd' ' -)
  [ -z "$changed" ] || echo ", with uncommitted changes to $changed"
}

# BENCHMARKS.md's Scale section runs from scale_begin to scale_end, at the
# end of the file: make bench-scale replaces it, make bench keeps it.
scale_begin='<!-- make bench-scale writes from here to the end marker -->'
scale_end='<!-- end of what make bench-scale writes -->'

# scale_section FILE: the Scale section of FILE, markers included; nothing
# when it has none.
scale_section() {
  [ -f "$1" ] || return 0
  awk -v b="$scale_begin" -v e="$scale_end" '$0 == b {on = 1} on {print} $0 == e {on = 0}' "$1"
}
