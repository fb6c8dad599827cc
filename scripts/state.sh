#!/usr/bin/env bash
# Issue 15's process figures: a gateway process (memory store) on core 0,
# the simulator as upstream, wrk pinned to core 1 sending distinct 1 KB tokens.
set -u
# Usage: scripts/state.sh (wrk from Debian's apt; binaries built here).
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work"
go build -C "$repo" -o "$work/bin/" ./cmd/gateway ./cmd/fusioo-sim
cp "$repo/bench/wrk/tokens.lua" .
cat > gw.toml <<'TOML'
[server]
listen = "127.0.0.1:18180"
admin_listen = "127.0.0.1:19190"
[upstream]
url = "http://127.0.0.1:18181"
[quota]
limit = 1000
window = "1h"
max_keys = 200000
[log]
level = "warn"
TOML
rss() { curl -s 127.0.0.1:19190/metrics | awk '/^process_resident_memory_bytes /{printf "%.1f", $2/1e6}'; }
heap() { curl -s 127.0.0.1:19190/metrics | awk '/^go_memstats_heap_inuse_bytes /{printf "%.1f", $2/1e6}'; }
bin/fusioo-sim -listen 127.0.0.1:18181 > sim.log 2>&1 & SIM=$!
start_gw() { taskset -c 0 bin/gateway -config gw.toml > gw.log 2>&1 & GW=$!; sleep 1; }
# 1. 100,000 idle tokens (max_keys 200,000 so the cap is not what is measured)
start_gw
echo "idle: start RSS $(rss) MB heap $(heap) MB"
LIMIT=100000 PREFIX=tok- taskset -c 1 wrk -t1 -c32 -d45s -s tokens.lua http://127.0.0.1:18180/ | grep -E "Requests/sec|requests in|Non-2xx"
echo "idle: right after RSS $(rss) MB heap $(heap) MB"
sleep 30
echo "idle: 30 s idle RSS $(rss) MB heap $(heap) MB; sim: $(curl -s 127.0.0.1:18181/_sim/ledger | head -c 120)"
# An idle process collects at the runtime's forced GC (every 2 minutes);
# the gateway then returns the freed heap (within 30 s).
sleep 120
echo "idle: 150 s idle RSS $(rss) MB heap $(heap) MB"
kill $GW; wait $GW 2>/dev/null
# 2. made-up tokens at full speed, default max_keys (100,000)
sed -i 's/^max_keys = .*/max_keys = 100000/' gw.toml
start_gw
echo "made-up: start RSS $(rss) MB"
( for i in $(seq 1 60); do sleep 5; echo "  t=$((i*5))s RSS $(rss) MB heap $(heap) MB"; done ) > rss_samples.txt & MON=$!
LIMIT=1000000 PREFIX=revoked- taskset -c 1 wrk -t1 -c32 -d${MADEUP_SECS:-300}s -s tokens.lua http://127.0.0.1:18180/ | grep -E "Requests/sec|requests in|Non-2xx"
kill $MON 2>/dev/null
echo "made-up: after RSS $(rss) MB heap $(heap) MB; max RSS sampled: $(awk '{print $3}' rss_samples.txt | sort -n | tail -1) MB"
kill $GW $SIM
