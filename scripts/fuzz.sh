#!/usr/bin/env bash
# Bounded fuzzing of the parsers that see untrusted input. Each target runs
# a fixed number of inputs (about 4 s of it on an idle 2-core machine),
# not a duration: with a duration, Go's fuzzing coordinator can fail a
# clean run with "context deadline exceeded" at its end (golang/go#75804,
# seen here on go1.26). `scripts/fuzz.sh 5m` runs each for a duration by
# hand instead.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-}
targets=(
  "./internal/fusioo FuzzPeekCode 60000x"
  "./internal/fusioo FuzzRoutesMatch 60000x"
  "./internal/proxy FuzzCredential 15000x"
  "./internal/proxy FuzzHandler 12000x"
  "./internal/config FuzzParse 21000x"
  "./internal/retry FuzzParseRetryAfter 30000x"
)
for tg in "${targets[@]}"; do
  set -- $tg
  budget=${t:-$3}
  echo "fuzz $2 ($1) for $budget"
  out=$(mktemp)
  # A short minimization, so a target that finds many new inputs still
  # spends its time fuzzing (minimizing each took most of a minute).
  if go test -run '^$' -fuzz "^$2\$" -fuzztime "$budget" -fuzzminimizetime 1s "$1" > "$out" 2>&1; then
    # The last progress line shows the target ran (its execs), then ok.
    grep '^fuzz: elapsed' "$out" | tail -n 1 || true
    tail -n 1 "$out"
    rm -f "$out"
  else
    # All of it: the failing input, or what else ended the run.
    grep -v '^fuzz: elapsed' "$out"
    rm -f "$out"
    exit 1
  fi
done
