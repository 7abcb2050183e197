#!/usr/bin/env bash
# Print the path of a promtool binary (for make rules), fetching one if there
# is none.
#
# Uses `promtool` from PATH when there is one. Otherwise takes promtool out of
# Debian's prometheus package, once, into the cache dir. The package is
# downloaded with apt-get (signature and hash checked), not installed: its
# postinst starts a Prometheus server from /etc/init.d on any machine without
# systemd whose policy-rc.d does not forbid it, and it brings that server, a
# system user and eleven JavaScript packages (332 MB) for one 48 MB binary.
# Progress and errors go to stderr; stdout carries only the path.
set -euo pipefail

CACHE_DIR=${TELETRACKER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-teletracker}
dir=$CACHE_DIR/promtool
bin=$dir/promtool

if command -v promtool 2>/dev/null; then
  exit 0
fi
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
# One fetcher at a time: make runs its targets in parallel.
exec 9>"$dir/.lock"
flock 9
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

tmp=$(mktemp -d "$dir/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
log=$dir/fetch.log
# A fresh machine has no package lists, and old ones may name a version the
# archive no longer has: then update them and try once more.
if ! apt-get download prometheus >"$log" 2>&1; then
  if ! { apt-get -o DPkg::Lock::Timeout=120 update && apt-get download prometheus; } >>"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "promtool.sh: could not download Debian's prometheus package (apt-get update needs root)" >&2
    exit 1
  fi
fi
dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool >promtool
chmod 755 promtool
if ! ./promtool --version >>"$log" 2>&1; then
  tail -5 "$log" >&2
  echo "promtool.sh: the extracted promtool does not run" >&2
  exit 1
fi
mv promtool "$bin"
echo "$bin"
