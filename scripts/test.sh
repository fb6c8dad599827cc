#!/usr/bin/env bash
# The project's one test command (README): installs what the tests need
# when it is missing, then runs gofmt, go vet, staticcheck, the race-enabled
# test suite (bench/harness's fleet runs beside it, without -race), and
# short bounded fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure_commands redis-server:redis-server promtool:prometheus
# Tests start their own redis-server on free loopback ports; a service the
# package may have started on 6379 is neither needed nor used.

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "== go test -race, and bench/harness's fleet runs beside it"
# The fleet runs (bench/harness) are paced by the wall clock and judge the
# gateway's own timing: they run without the race detector, three at a
# time, while the race-enabled suite of every other package runs (see
# fleetTest in bench/harness/quota_test.go).
harness_out=$(mktemp)
go test -count=1 -parallel 3 -timeout 15m ./bench/harness > "$harness_out" 2>&1 &
harness_pid=$!
race_rc=0
go test -race -count=1 -timeout 15m $(go list ./... | grep -v '/bench/harness$') || race_rc=$?
harness_rc=0
wait "$harness_pid" || harness_rc=$?
cat "$harness_out"
rm -f "$harness_out"
if [ "$race_rc" -ne 0 ] || [ "$harness_rc" -ne 0 ]; then
  echo "go test failed (race suite: exit $race_rc, bench/harness: exit $harness_rc)"
  exit 1
fi

if [ -x scripts/fuzz.sh ]; then
  echo "== fuzz (bounded)"
  scripts/fuzz.sh "${FUZZTIME:-10s}"
fi
