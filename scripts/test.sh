#!/usr/bin/env bash
# The project's one test command (README): installs what the tests need
# when it is missing, then runs gofmt, go vet, staticcheck, the race-enabled
# test suite, bench/harness's fleet runs (without -race), and short bounded
# fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
ensure_commands redis-server:redis-server promtool:prometheus
# Tests start their own redis-server on free loopback ports; a service the
# package may have started on 6379 is neither needed nor used.

# stage names a step and how long the run has taken so far.
stage() { echo "== $1 (at ${SECONDS}s)"; }

stage "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted"; exit 1
fi

stage "go vet"
go vet ./...

stage "staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

stage "go test -race"
go test -race -count=1 -timeout 15m $(go list ./... | grep -v '/bench/harness$')

stage "handler stacks (without -race, which makes every frame larger)"
go test -count=1 -run '^TestStackStaysSmall$' ./bench/requestpath

stage "bench/harness (the fleet runs, three at a time, without -race)"
# The fleet runs are paced by the wall clock and judge the gateway's own
# timing: they run without the race detector and after the race-enabled
# suite, not beside it (see fleetTest in bench/harness/quota_test.go).
go test -count=1 -parallel 3 -timeout 15m ./bench/harness

if [ -x scripts/fuzz.sh ]; then
  stage "fuzz (bounded)"
  scripts/fuzz.sh ${FUZZTIME:+"$FUZZTIME"}
fi
echo "== done (${SECONDS}s)"
