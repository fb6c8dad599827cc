#!/usr/bin/env bash
# Fault runs (issue 6, item 4), each ending in a "PASS name" or "FAIL name"
# line; the script exits non-zero if any failed:
#   redis-kill       Redis SIGKILLed for 10 s under load, restarted empty:
#                    no request lost, fallback, recovery, counts written back
#   redis-delay      every Redis packet delayed 200 ms for 10 s: timeouts,
#                    no request waits for Redis, no goroutine pile-up
#   redis-loss       the fleet run (3 replicas, 3x the quota) while Redis
#                    loses its data (FLUSHALL + SCRIPT FLUSH twice; kill -9
#                    and empty restart), 10 runs each: 0 upstream 20005
#   upstream-errors  5% 503 + 5% 30054 + 1% 504 upstream: client failures
#                    < 0.1%, 0 duplicate creates, amplification <= 1.25
#   upstream-hang    an upstream that never answers: client deadlines kept,
#                    gateway 504s in time, no goroutine growth
#   disconnect       10k clients queued over quota go away: no quota used,
#                    queue empty, goroutines and memory back to baseline
#   slow-bodies      10k clients stall their request bodies, twice:
#                    answered 408 within server.body_timeout, another
#                    token's retries unaffected, freed memory returned
#                    (>= 80% of the growth) and no growth flood to flood
#
#   scripts/faults.sh                 # all of them (about 12 minutes)
#   scripts/faults.sh redis-kill ...  # some of them
#   SHORT=1 scripts/faults.sh         # shorter phases around each fault
# Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure_commands redis-server:redis-server

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gwfaults.XXXXXX")
echo "building into $tmp/bin"
go build -o "$tmp/bin/" ./cmd/gateway ./cmd/fusioo-sim ./bench/cmd/bareproxy ./bench/cmd/gwbench

runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(redis-kill redis-delay redis-loss upstream-errors upstream-hang disconnect slow-bodies)
flags=()
[ -n "${SHORT:-}" ] && flags+=(-short)
failed=()
for r in "${runs[@]}"; do
  echo
  echo "===== $r"
  if ! "$tmp/bin/gwbench" -bin "$tmp/bin" -logs "$tmp/logs-$r" "${flags[@]}" "$r"; then
    failed+=("$r")
  fi
done
echo
echo "logs: $tmp"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all fault runs passed: ${runs[*]}"
