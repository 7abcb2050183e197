#!/usr/bin/env bash
# make bench: measure the engine on one Vault dev server, in one run, and
# write the results to BENCHMARKS.md (and print them).
#
#   1. token read throughput and latency against two baselines on the same
#      server, in interleaved rounds: floor (a minimal external plugin built
#      here from scripts/bench/floor) and kv (a kv v1 read of the same data)
#   2. /auth/refresh calls per rotation with 1, 100 and 1000 readers
#   3. the plugin process at rest with ten mounts: RSS and CPU over an idle
#      minute, before 1 and again after 2
#   4. the in-process Go benchmarks of the root package
#
# Expects bin/ to hold the plugin and the fake (make bench builds them first).
# Everything listens on 127.0.0.1; every process started here is stopped by
# its process group on exit, failure or Ctrl-C. Work files go to a temporary
# directory, removed on success and kept (with Vault's log) on failure.
#
# Settings: BENCH_VAULT_PORT (first port tried, 8230), BENCH_ROUNDS (24),
# BENCH_ROUND_TIME (500ms), BENCH_IDLE (60, seconds), VERSION (from the Makefile).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
version=${VERSION:?VERSION is set by the Makefile}
bench=bench
# shellcheck source=scripts/bench/lib.sh
. "$root/scripts/bench/lib.sh"
plugin=vault-plugin-secrets-teletracker
rounds=${BENCH_ROUNDS:-24}
round_time=${BENCH_ROUND_TIME:-500ms}
idle=${BENCH_IDLE:-60}
started=$(date +%s)

# Process accounting from /proc: CPU in clock ticks (utime+stime, all
# threads), memory in KiB.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
mem_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

api() { curl -sSf -H "X-Vault-Token: $VAULT_TOKEN" "$@"; }

# idle_minute WHEN: watch the engine's plugin process for $idle s with no
# requests; appends a row to section 3's table and two to the targets.
idle_minute() {
  local when=$1 rss0 rss1 anon file hwm cpu0 cpu1 vcpu0 vcpu1 cpu vcpu pct verdict
  log "3/4: the plugin at rest for $idle s $when (plugin pid $tt_pid)"
  sleep 2
  rss0=$(mem_kib "$tt_pid" VmRSS)
  cpu0=$(cpu_ticks "$tt_pid")
  vcpu0=$(cpu_ticks "$vault_pid")
  sleep "$idle"
  rss1=$(mem_kib "$tt_pid" VmRSS)
  anon=$(mem_kib "$tt_pid" RssAnon)
  file=$(mem_kib "$tt_pid" RssFile)
  hwm=$(mem_kib "$tt_pid" VmHWM)
  cpu1=$(cpu_ticks "$tt_pid")
  vcpu1=$(cpu_ticks "$vault_pid")
  cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
  vcpu=$(awk -v t=$((vcpu1 - vcpu0)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
  pct=$(awk -v c="$cpu" -v s="$idle" 'BEGIN {printf "%.2f", 100 * c / s}')
  echo "| $when | $(mib "$rss0") MiB | $(mib "$rss1") MiB | $(mib "$anon") MiB | $(mib "$file") MiB | $(mib "$hwm") MiB | $cpu s (${pct}% of a core) | $vcpu s |" >>"$state/idle.md"
  verdict=met
  if [ "$rss1" -ge $((40 * 1024)) ]; then
    verdict="missed by $(mib $((rss1 - 40 * 1024))) MiB; of the RSS, $(mib "$anon") MiB is Go heap and stacks and $(mib "$file") MiB the binary's pages (see section 3)"
  fi
  echo "| plugin RSS at rest, ten mounts, $when | under 40 MiB | $(mib "$rss1") MiB | $verdict |" >>"$summary"
  verdict=met
  if awk -v p="$pct" 'BEGIN {exit !(p >= 1)}'; then
    verdict="missed: ${pct}% of a core"
  fi
  echo "| plugin CPU over an idle minute, $when | near zero (taken as under 1% of one core) | $cpu s (${pct}% of a core) | $verdict |" >>"$summary"
}

vault=$("$root/scripts/vault.sh")
vault_version=$("$vault" version | head -1)
cpus=$(nproc)
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
hz=$(getconf CLK_TCK)
summary=$state/summary.md
: >"$summary"

log "building the floor plugin and the load generator"
mkdir -p "$state/plugins" "$state/bin"
cp "$root/bin/$plugin" "$state/plugins/$plugin"
(cd "$root" && go build -trimpath -o "$state/plugins/bench-floor" ./scripts/bench/floor &&
  go build -trimpath -o "$state/bin/load" ./scripts/bench/load)
load=$state/bin/load

# 4 first, while nothing else of ours runs.
gobench_cmd="go test -run '^\$' -bench . -benchmem ."
log "4/4: go benchmarks: $gobench_cmd"
(cd "$root" && go test -run '^$' -bench . -benchmem .) >"$state/gobench.txt"

fake fakett
fake_url=$url
start_vault
log "vault $vault_version at $VAULT_ADDR, fake Teletracker at $fake_url"

{
  "$vault" plugin register -sha256="$(sha256sum "$state/plugins/$plugin" | cut -d' ' -f1)" \
    -version="$version" -command="$plugin" secret teletracker
  "$vault" plugin register -sha256="$(sha256sum "$state/plugins/bench-floor" | cut -d' ' -f1)" \
    -command=bench-floor secret bench-floor
  "$vault" secrets enable -path=floor bench-floor
  "$vault" secrets enable -path=kv -version=1 kv
  # Ten engine mounts, each with its own session, against the fake.
  for m in teletracker idle-{1..9}; do
    "$vault" secrets enable -path="$m" -plugin-version="$version" teletracker
    "$vault" write "$m/config" base_url="$fake_url" username=demo password=demo-password
  done
} >>"$state/setup.log" 2>&1
# The baselines hold the token read's own data: same names, same sizes.
data=$(api "$VAULT_ADDR/v1/teletracker/token" | jq -c .data)
api -X POST -d "$data" "$VAULT_ADDR/v1/floor/token"
api -X POST -d "$data" "$VAULT_ADDR/v1/kv/token"
tt_pid=$(child "$plugin")
floor_pid=$(child bench-floor)

idle_minute "before any load"

log "1/4: token vs floor vs kv, $rounds interleaved rounds of $round_time at 4, 16, 64 clients"
"$load" throughput -addr "$VAULT_ADDR" -token "$VAULT_TOKEN" -vault-pid "$vault_pid" \
  -targets "token=teletracker/token=$tt_pid,floor=floor/token=$floor_pid,kv=kv/token" \
  -conc 4,16,64 -rounds "$rounds" -dur "$round_time" -bar 1.2 -summary "$summary" >"$state/throughput.md"

log "2/4: /auth/refresh calls per rotation with 1, 100, 1000 readers (about a minute)"
cases=()
for n in 1 100 1000; do
  # Each mount its own fake, so each count is its own; tokens live 24 s, so
  # each is due 12 s after it was obtained and reads find it due.
  fake "fakett-$n" -token-lifetime 24s
  {
    "$vault" secrets enable -path="rot-$n" -plugin-version="$version" teletracker
    "$vault" write "rot-$n/config" base_url="$url" username=demo password=demo-password
  } >>"$state/setup.log" 2>&1
  cases+=("$n=rot-$n=$url")
done
"$load" rotation -addr "$VAULT_ADDR" -token "$VAULT_TOKEN" -rotations 5 -timeout 150s \
  -cases "$(IFS=,; echo "${cases[*]}")" -summary "$summary" >"$state/rotation.md"
for n in 1 100 1000; do "$vault" secrets disable "rot-$n" >>"$state/setup.log" 2>&1; done

idle_minute "after sections 1 and 2"
floor_rss=$(mem_kib "$floor_pid" VmRSS)
elapsed=$(($(date +%s) - started))

gobench_table() {
  echo "| benchmark | iterations | ns/op | B/op | allocs/op |"
  echo "|---|---:|---:|---:|---:|"
  awk '/^Benchmark/ {
    row = "| " $1 " | " $2
    for (i = 3; i < NF; i += 2) v[$(i + 1)] = $i
    print row " | " v["ns/op"] " | " v["B/op"] " | " v["allocs/op"] " |"
  }' "$state/gobench.txt"
}

report=$state/BENCHMARKS.md
cat >"$report" <<EOF
# Benchmarks

Written by \`make bench\` (scripts/bench/run.sh), all but the Scale section at the end, which
\`make bench-scale\` (scripts/bench/scale.sh) writes and \`make bench\` keeps; do not edit by hand.

- Date: $(date -u +%Y-%m-%dT%H:%M:%SZ)
- Command: \`make bench\` (VERSION=$version), run.sh wall time ${elapsed} s (the builds make runs first not included)
- Engine: commit $(git -C "$root" rev-parse --short HEAD)$(engine_changes)
- Vault: $vault_version, one dev server on 127.0.0.1 (in-memory storage, no audit device)
- Machine: $cpus CPUs ($cpu_model), $(go env GOVERSION), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)
- The load generator (scripts/bench/load), Vault, the plugins and the fakes share these $cpus CPUs, and the
  machine may be shared with other work: compare the ratios, measured in the same run, not the absolute numbers.

## Targets

| what | target | measured | verdict |
|---|---|---|---|
$(cat "$summary")

## 1. Token read throughput against the floor and kv

\`token\` is \`teletracker/token\`; \`floor\` is scripts/bench/floor, a minimal external plugin (ServeMultiplex,
one framework path returning the same seven fields from memory) registered on the same server; \`kv\` is a
kv version 1 read of the token read's own data. Every external plugin pays the gRPC hop from Vault, so the
floor is the bar; kv is builtin and is there for context. Each round runs every read once, for $round_time
each, in an order rotated every round, with keep-alive clients that each reuse one connection. CPU µs/read
comes from /proc (clock ticks, 10 ms, so coarse in one run; medians over rounds) and getrusage, and shows
where the machine's CPU goes; it is also immune to what else runs on the machine, which reads/s is not.
The floor is written the plain way, so it pays what the SDK's framework does per request, including a
call from the plugin back to Vault for the replication state; the engine answers token reads before that
(backend.go, HandleRequest), so token/floor above 1 is what skipping it saves.

$(cat "$state/throughput.md")

## 2. Upstream calls per rotation

One mount per reader count, each against its own fake Teletracker whose tokens live 24 s (so each is due
12 s after it was obtained), all three run side by side (to keep \`make bench\` short) until every mount has rotated at least 5 times.
Rotations are the engine's \`refresh_count\` (status); calls are the fake's \`refresh_calls\` over exactly
the same window. Every call is a refresh token spent, so "calls not followed by a rotation" counts the calls
made between rotations. Vault's one-minute tick may rotate a token up to a minute ahead of need, which is why
gaps between calls can be as short as the engine's 10 s floor. "Tokens seen" counts the distinct tokens the
readers received: the first one and one per rotation. "Reads over 1 s" and "slowest read" (with when it was
sent, after the readers started; tokens fall due about 12 s apart) show the reads that waited for a refresh;
the three cases share the machine, so the 1000 readers slow the others' reads too.

$(cat "$state/rotation.md")

## 3. Cost at rest

The engine's plugin process (one process serves every mount of the engine; a child of Vault) with ten mounts
configured (sessions with one-hour tokens), over ${idle} s with no requests, twice: right after the mounts were
set up, and after the load of sections 1 and 2 (whose three mounts are then disabled), which is the state a
long-running plugin is in. From /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (utime+stime).
Vault's one-minute tick runs each mount's periodic function about once in each minute. For comparison,
the floor plugin (one mount) ended at $(mib "$floor_rss") MiB. RSS splits into anonymous memory (the Go heap and
goroutine stacks) and file-backed pages (the plugin binary's code and data, shared with the page cache). Memory
the Go runtime freed after a burst of concurrent requests stays in RSS until a garbage collection and the
scavenger return it, and a plugin at rest allocates too little to start a collection (the runtime forces one
every two minutes), so the second row can include memory that is no longer in use.

| idle minute | RSS at its start | RSS at its end | of which anonymous | of which file-backed | peak RSS so far (VmHWM) | plugin CPU | Vault CPU |
|---|---:|---:|---:|---:|---:|---:|---:|
$(cat "$state/idle.md")

## 4. In-process Go benchmarks

\`$gobench_cmd\` in the repository root: the token read handler (one reader, and readers in parallel) and
the rotation decision, without Vault or gRPC.

$(gobench_table)
EOF
section=$(scale_section "$root/BENCHMARKS.md")
[ -z "$section" ] || printf '\n%s\n' "$section" >>"$report"
mv "$report" "$root/BENCHMARKS.md"
cat "$root/BENCHMARKS.md"
log "done in $(($(date +%s) - started)) s; wrote BENCHMARKS.md"
