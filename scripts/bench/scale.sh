#!/usr/bin/env bash
# make bench-scale: the engine's cost as the mounts one plugin process serves
# grow from 1 to 1,000, on one Vault dev server, in one run; writes the Scale
# section of BENCHMARKS.md (and prints it).
#
# The mounts (m0001 and on) are added in steps, 1, 10, 100, 1000, each with
# its own session against one fake Teletracker whose tokens live an hour (so
# none falls due), and as many mounts (f0001 and on) of the floor plugin
# (scripts/bench/floor, the least a multiplexed plugin can be) in a process
# of their own, to tell the engine's own cost from the SDK's. At each step:
#   - the time to enable and configure the mounts added
#   - token reads of m0001 against solo, a mount of the same binary
#     registered under a second name so that it gets a process of its own,
#     in interleaved rounds (scripts/bench/load)
#   - two idle minutes holding two of Vault's ticks: RSS and CPU of the plugin,
#     the solo plugin, the floor plugin and Vault, each tick's work, storage
#     operations and rollback times (from Vault's Prometheus metrics) and
#     calls to Teletracker
# Then the herd: every mount is pointed at a second fake, whose tokens live
# eight minutes, as fast as the plugin's pacer lets their logins through, so
# that all of them fall due together; the fake counts the refreshes, the late
# ones and the calls per second until every mount has rotated once.
#
# Expects bin/ to hold the plugin and the fake (make bench-scale builds them
# first). Everything listens on 127.0.0.1; every process started here is
# stopped by its process group on exit, failure or Ctrl-C.
#
# Settings: BENCH_VAULT_PORT (first port tried, 8230), BENCH_SCALE_COUNTS
# ("1 10 100 1000"), BENCH_SCALE_IDLE (120s), VERSION (from the Makefile),
# BENCH_SCALE_PROFILE (a directory: run the plugin built with the pprof tag,
# which serves Go's profiler, and save there its heap profiles at the start
# and end of each idle window and its goroutines at the end, to see what
# each mount costs and what a tick allocates).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
version=${VERSION:?VERSION is set by the Makefile}
bench=bench-scale
# shellcheck source=scripts/bench/lib.sh
. "$root/scripts/bench/lib.sh"
plugin=vault-plugin-secrets-teletracker
read -r -a counts <<<"${BENCH_SCALE_COUNTS:-1 10 100 1000}"
idle=${BENCH_SCALE_IDLE:-120s}
profile=${BENCH_SCALE_PROFILE:-}
started=$(date +%s)

vault=$("$root/scripts/vault.sh")
vault_version=$("$vault" version | head -1)

log "building the floor plugin, the load generator and the scale helper"
results=$state/results
mkdir -p "$state/plugins" "$state/bin" "$results"
cp "$root/bin/$plugin" "$state/plugins/$plugin"
cp "$root/bin/$plugin" "$state/plugins/teletracker-solo"
(cd "$root" && go build -trimpath -o "$state/plugins/bench-floor" ./scripts/bench/floor &&
  go build -trimpath -o "$state/bin/load" ./scripts/bench/load &&
  go build -trimpath -o "$state/bin/scale" ./scripts/bench/scale)
load=$state/bin/load
scale=$state/bin/scale
plugin_env=()
pprof_flag=()
if [ -n "$profile" ]; then
  mkdir -p "$profile"
  (cd "$root" && go build -trimpath -tags pprof -ldflags "-X $(go list -m).Version=$version" \
    -o "$state/plugins/$plugin" ./cmd/$plugin)
  pprof_addr=127.0.0.1:$(free_port 6060)
  # memprofilerate: a heap sample every 4 KiB instead of 512, for small costs.
  plugin_env=(-env "TELETRACKER_PPROF_ADDR=$pprof_addr" -env GODEBUG=memprofilerate=4096)
  pprof_flag=(-pprof "$pprof_addr" -profile-dir "$profile")
  log "profiling the plugin at http://$pprof_addr/debug/pprof/, saving to $profile"
fi

fake fakett
fake_url=$url
fake herd -token-lifetime 8m
herd_url=$url
# Vault keeps its metrics for Prometheus only when told to; rollback times
# per mount tell the engine's ticks from the floor's.
cat >"$state/telemetry.hcl" <<'EOF'
telemetry {
  prometheus_retention_time        = "1h"
  disable_hostname                 = true
  add_mount_point_rollback_metrics = true
}
EOF
start_vault -config="$state/telemetry.hcl"
wait_for "vault's rollback manager" grep -q 'starting rollback manager' "$state/vault.log"
tick_zero=$(awk '/starting rollback manager/ {print $1; exit}' "$state/vault.log")
log "vault $vault_version at $VAULT_ADDR (ticks from $tick_zero), fakes at $fake_url and $herd_url"

{
  "$vault" plugin register -sha256="$(sha256sum "$state/plugins/$plugin" | cut -d' ' -f1)" \
    -version="$version" -command="$plugin" "${plugin_env[@]}" secret teletracker
  "$vault" plugin register -sha256="$(sha256sum "$state/plugins/teletracker-solo" | cut -d' ' -f1)" \
    -version="$version" -command=teletracker-solo secret teletracker-solo
  "$vault" plugin register -sha256="$(sha256sum "$state/plugins/bench-floor" | cut -d' ' -f1)" \
    -command=bench-floor secret bench-floor
  "$vault" secrets enable -path=solo -plugin-version="$version" teletracker-solo
  "$vault" write solo/config base_url="$fake_url" username=demo password=demo-password
} >>"$state/setup.log" 2>&1
solo_pid=$(child teletracker-solo)

common=(-addr "$VAULT_ADDR" -token "$VAULT_TOKEN")

reads() {
  log "$1 mounts: token reads of m0001 against solo"
  "$load" throughput "${common[@]}" -vault-pid "$vault_pid" \
    -targets "many=m0001/token=$tt_pid,solo=solo/token=$solo_pid" -conc 16 -rounds 24 -dur 500ms \
    -bar 0.95 -ratio-json "$results/reads-$1.json" >"$state/reads-$1.md"
}

at_rest() {
  log "$1 mounts: $idle at rest"
  "$scale" idle "${common[@]}" -n "$1" -dur "$idle" -tick-zero "$tick_zero" -vault-pid "$vault_pid" \
    -plugin-pid "$tt_pid" -solo-pid "$solo_pid" -floor-pid "$floor_pid" -fake "$fake_url" "${pprof_flag[@]}" \
    -out "$results/idle-$1.json"
  [ -z "$profile" ] || curl -sSf -o "$profile/goroutines-$1.txt" "http://$pprof_addr/debug/pprof/goroutine?debug=1"
}
prev=0
for n in "${counts[@]}"; do
  log "$n mounts: enabling and configuring mounts $((prev + 1)) to $n"
  "$scale" setup "${common[@]}" -from $((prev + 1)) -to "$n" -fake "$fake_url" -version "$version" \
    -out "$results/setup-$n.json"
  "$scale" setup "${common[@]}" -from $((prev + 1)) -to "$n" -prefix f -plugin bench-floor
  if [ "$prev" = 0 ]; then
    tt_pid=$(child "$plugin")
    floor_pid=$(child bench-floor)
  fi
  kill -0 "$tt_pid" "$solo_pid" "$floor_pid"
  reads "$n"
  at_rest "$n"
  prev=$n
done
log "the herd: $prev mounts due together, one rotation"
"$scale" herd "${common[@]}" -n "$prev" -fake "$herd_url" -lifetime 8m -tick-zero "$tick_zero" \
  -plugin-pid "$tt_pid" -out "$results/herd.json"
kill -0 "$tt_pid" "$solo_pid" "$floor_pid"
"$scale" report -dir "$results" -n "$(IFS=,; echo "${counts[*]}")" >"$state/tables.md"
elapsed=$(($(date +%s) - started))

section=$state/section.md
cat >"$section" <<EOF
$scale_begin

## Scale

Written by \`make bench-scale\` (scripts/bench/scale.sh and scripts/bench/scale); do not edit by hand.

- Date: $(date -u +%Y-%m-%dT%H:%M:%SZ)
- Command: \`make bench-scale\` (VERSION=$version), scale.sh wall time ${elapsed} s (the builds make runs first not included)
- Engine: commit $(git -C "$root" rev-parse --short HEAD)$(engine_changes)${profile:+, built with the pprof tag (the profiler on)}
- Vault: $vault_version, one dev server on 127.0.0.1 (in-memory storage, no audit device)
- Machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(go env GOVERSION), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)
- Vault, the plugins, the fakes and the load generator share these CPUs, and the machine may be shared with
  other work ("others' CPU" below): compare the ratios and the slopes, measured in the same run.

The engine's mounts (m0001 on) are added in steps to one plugin process, each configured with its own session
(a login to one fake Teletracker whose tokens live an hour, so none falls due while the mounts rest). Beside
them, in processes of their own: \`solo\`, one mount of the same binary registered under a second name, the
reference for token reads; and as many mounts (f0001 on) of the floor plugin (scripts/bench/floor, a
multiplexed plugin with one path and nothing else), which shows what the SDK's plugin serving costs any
plugin per mount: the engine's own cost is the difference.

Vault's periodic tick is one ticker for all mounts (vault/rollback.go): every minute it starts the rollback,
and so the PeriodicFunc, of every mount at once, 256 at a time. Ticks are not spread by when a mount was
enabled. Each step's two idle minutes (5 s after its reads) therefore hold two ticks, and run on until 10 s
after the second when it comes near their end. RSS (at the
end), CPU and open files come from /proc; a tick's work is the plugin's and Vault's CPU from the tick to the
plugin's last CPU use before a quiet second (sampled every 50 ms, in 10 ms clock ticks, so "0 ms" means
under 10 ms); rollback times (per mount, including the wait for the plugin) and storage operations
(vault.barrier.get/put/list, which include Vault's own, hence more than 2 per mount at one mount) come from
Vault's Prometheus metrics. Token reads: \`load throughput\` of m0001 against solo, 24 interleaved rounds of
500 ms at 16 clients, after each step's setup, with the CPU each read cost the plugin that served it and Vault.

The herd: after the last step, every mount is pointed at a second fake whose tokens live 8 minutes (a config
write of base_url and the password: one login each, paced like every call), all at once, so that every mount
falls due together; then the fake counts every call until each mount has refreshed once
(some may refresh twice meanwhile: every call must still be a rotation, so the calls and the mounts' rotations
are counted together in a moment when no call is in flight). "Late" counts the refreshes that
came after the session's token had expired. 8 minutes is about the shortest lifetime with which 1,000 mounts
can be served at 10 calls a second for good: the margin is half the lifetime, and a tick replaces a token a
tick and up to half the margin early (its spread), so each mount rotates every 1 to 3 minutes, 8.3 calls a
second on average.

$(cat "$state/tables.md")
$scale_end
EOF

if grep -qxF "$scale_begin" "$root/BENCHMARKS.md"; then
  awk -v b="$scale_begin" -v e="$scale_end" -v f="$section" '
    $0 == b { while ((getline line < f) > 0) print line; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip' "$root/BENCHMARKS.md" >"$state/BENCHMARKS.md"
else
  { cat "$root/BENCHMARKS.md"; echo; cat "$section"; } >"$state/BENCHMARKS.md"
fi
mv "$state/BENCHMARKS.md" "$root/BENCHMARKS.md"
cat "$section"
log "done in $(($(date +%s) - started)) s; wrote the Scale section of BENCHMARKS.md"
