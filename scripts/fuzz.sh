#!/usr/bin/env bash
# Bounded fuzzing of the parsers that see untrusted input: each target runs
# for $1 (default 10s). CI keeps it short; run longer by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-10s}
targets=(
  "./internal/fusioo FuzzPeekCode"
  "./internal/fusioo FuzzRoutesMatch"
  "./internal/proxy FuzzCredential"
  "./internal/proxy FuzzHandler"
  "./internal/config FuzzParse"
)
if grep -q "func FuzzParseRetryAfter" internal/retry/*_test.go 2>/dev/null; then
  targets+=("./internal/retry FuzzParseRetryAfter")
fi
for tg in "${targets[@]}"; do
  set -- $tg
  echo "fuzz $2 ($1) for $t"
  out=$(mktemp)
  # A short minimization, so a target that finds many new inputs still
  # spends its time fuzzing (minimizing each took most of a minute).
  if go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" -fuzzminimizetime 1s "$1" > "$out" 2>&1; then
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
