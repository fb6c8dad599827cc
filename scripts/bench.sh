#!/usr/bin/env bash
# Load benchmark (issue 6, items 1 and 3): builds the gateway, the Fusioo
# simulator, the bare-proxy baseline and the driver once, then runs
#   1. `gwbench bench`: the simulator (no faults, no quota), a bare
#      httputil.ReverseProxy and the gateway (memory store, then Redis
#      store; metrics, retries and the access log on, as deployed), each
#      driven with the same load on loopback in alternating rounds:
#      a closed loop (max throughput), then a constant rate at 60% of the
#      bare proxy's max; prints throughput and p50/p90/p99 as ratios to
#      the bare proxy, plus CPU time per request by process;
#   2. `gwbench quota`: 3 replicas on one Redis, a strict rolling window
#      (60 / 10 s per token), 5 tokens, 3x the quota demanded for 40 s,
#      judged at the simulator (breaches, quota used, how fast 429s come).
#
#   scripts/bench.sh wrk [REV] [FLAGS] # issue 17's comparison under wrk (a load
#                                    # generator in C on its own core): bare
#                                    # proxy, gateway memory 1/16 tokens, Redis
#                                    # 16/2000 tokens, rotated rounds, paired
#                                    # ratios; with REV, the gateway built at REV
#                                    # runs every gateway workload too (base-…)
#   scripts/bench.sh quota-compare [REV]  # the quota run with the gateway
#                                    # built at REV (default 9ae3c03, before
#                                    # fleet-wide reservations), then this tree
# Exits non-zero when a pass/fail criterion failed.
#
#   scripts/bench.sh                 # both (about 6 minutes)
#   scripts/bench.sh bench [FLAGS]   # only the comparison; FLAGS go to gwbench,
#                                    # e.g. -rounds 5 -concurrency 64 -enforce=false
#   scripts/bench.sh quota [FLAGS]   # only the quota run
#   scripts/bench.sh saving [FLAGS]  # issue 18's quota-saving run: a dashboard
#                                    # of one token (20 clients, 5 pages, every
#                                    # 2 s) and a sync job, coalescing off / on /
#                                    # on with a 10 s cache on the lists; upstream
#                                    # requests and quota per minute (~3 minutes)
# Not part of scripts/test.sh: it takes minutes and needs a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure_commands redis-server:redis-server taskset:util-linux

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gwbench.XXXXXX")
echo "building into $tmp/bin"
go build -o "$tmp/bin/" ./cmd/gateway ./cmd/fusioo-sim ./bench/cmd/bareproxy ./bench/cmd/gwbench

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(go version)"
what=${1:-all}
[ $# -gt 0 ] && shift
status=0
case "$what" in
  all)
    "$tmp/bin/gwbench" -bin "$tmp/bin" -logs "$tmp/logs-bench" "$@" bench || status=$?
    "$tmp/bin/gwbench" -bin "$tmp/bin" -logs "$tmp/logs-quota" "$@" quota || status=$?
    ;;
  bench|quota|saving)
    "$tmp/bin/gwbench" -bin "$tmp/bin" -logs "$tmp/logs-$what" "$@" "$what" || status=$?
    ;;
  wrk)
    ensure_commands wrk:wrk nginx:nginx-light
    base_flag=()
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
      git worktree add --quiet --detach "$tmp/base-src" "$1"
      (cd "$tmp/base-src" && go build -o "$tmp/base-bin/" ./cmd/gateway)
      git worktree remove --force "$tmp/base-src"
      echo "base: gateway at $1"
      base_flag=(-wrk-base "$tmp/base-bin")
      shift
    fi
    "$tmp/bin/gwbench" -bin "$tmp/bin" -logs "$tmp/logs-wrk" -wrk-script bench/wrk/bench.lua "${base_flag[@]}" "$@" wrk || status=$?
    ;;
  quota-compare)
    base=${1:-9ae3c03}
    [ $# -gt 0 ] && shift
    git worktree add --quiet --detach "$tmp/base-src" "$base"
    (cd "$tmp/base-src" && go build -o "$tmp/base-bin/" ./cmd/gateway)
    git worktree remove --force "$tmp/base-src"
    cp "$tmp/bin/fusioo-sim" "$tmp/bin/bareproxy" "$tmp/base-bin/"
    echo "== quota run, gateway at $base"
    "$tmp/bin/gwbench" -bin "$tmp/base-bin" -logs "$tmp/logs-quota-base" "$@" quota || true
    echo "== quota run, gateway of this tree ($(git rev-parse --short HEAD))"
    "$tmp/bin/gwbench" -bin "$tmp/bin" -logs "$tmp/logs-quota" "$@" quota || status=$?
    ;;
  *)
    echo "usage: $0 [all|bench|wrk [REV]|quota|saving|quota-compare [REV]] [gwbench flags]" >&2; exit 2 ;;
esac
echo "logs: $tmp"
exit $status
