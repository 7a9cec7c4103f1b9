#!/usr/bin/env bash
# Over the wire: bare axum against axum + NatLayer, with wrk as the load generator.
# ROUNDS alternating rounds (bare, bare with the two X-RateLimit-* headers as fixed values,
# then NatLayer) of SECS seconds each with CONNS connections and 2 wrk threads, after a
# warm-up of each; prints each round and the median ratios.
# Usage: bash benches/wrk/run.sh   (ROUNDS=5 SECS=10 CONNS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-5}" SECS="${SECS:-10}" CONNS="${CONNS:-32}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --features axum --example wrk_target
bin=target/release/examples/wrk_target
keys=$(mktemp)
trap 'kill $bare $headers $nat 2>/dev/null || true; rm -f "$keys"' EXIT
$bin bare 127.0.0.1:18181 /dev/null & bare=$!
$bin bare-headers 127.0.0.1:18183 /dev/null & headers=$!
$bin nat 127.0.0.1:18182 "$keys" & nat=$!
for port in 18181 18182 18183; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
# wrk needs keys for both (the bare server ignores them).
export KEY_FILE="$keys"
rps() { wrk -t2 -c"$CONNS" -d"$1"s -s benches/wrk/keys.lua "http://127.0.0.1:$2/api/v1/scans" \
  | awk '/Requests\/sec/ {print $2} /Non-2xx/ {print "NON2XX " $4 > "/dev/stderr"}'; }
rps 3 18181 >/dev/null; rps 3 18183 >/dev/null; rps 3 18182 >/dev/null
ratios=(); floors=(); against=()
for r in $(seq "$ROUNDS"); do
  b=$(rps "$SECS" 18181); h=$(rps "$SECS" 18183); n=$(rps "$SECS" 18182)
  ratio=$(python3 -c "print(f'{$n/$b:.3f}')")
  floor=$(python3 -c "print(f'{$h/$b:.3f}')")
  versus=$(python3 -c "print(f'{$n/$h:.3f}')")
  ratios+=("$ratio"); floors+=("$floor"); against+=("$versus")
  echo "round $r: bare $b, bare + headers $h, NatLayer $n req/s; NatLayer/bare $ratio, headers/bare $floor, NatLayer/(bare + headers) $versus"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median NatLayer/bare $(median "${ratios[@]}"), headers/bare $(median "${floors[@]}"), NatLayer/(bare + headers) $(median "${against[@]}")"
