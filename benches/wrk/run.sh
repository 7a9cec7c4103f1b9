#!/usr/bin/env bash
# Over the wire: bare axum, bare with the two X-RateLimit-* headers as fixed values, the
# "glue" (SHA-256 + HashMap auth before tower_governor keyed by tenant, use_headers) and
# axum + NatLayer, with wrk as the load generator (1,000 keys rotated). ROUNDS alternating
# rounds of SECS seconds each with CONNS connections, after a warm-up of each, for each wrk
# thread count in THREADS; prints each round (requests/s and p99 latency) and the median
# ratios.
# Usage: bash benches/wrk/run.sh   (ROUNDS=5 SECS=10 CONNS=32 THREADS="1 2" by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-5}" SECS="${SECS:-10}" CONNS="${CONNS:-32}" THREADS="${THREADS:-1 2}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --features axum --example wrk_target
bin=target/release/examples/wrk_target
keys=$(mktemp)
trap 'kill $bare $headers $nat ${glue:-} 2>/dev/null || true; rm -f "$keys"' EXIT
$bin bare 127.0.0.1:18181 /dev/null & bare=$!
$bin bare-headers 127.0.0.1:18183 /dev/null & headers=$!
$bin nat 127.0.0.1:18182 "$keys" & nat=$!
for port in 18181 18182 18183; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
# The glue accepts the keys the NatLayer server wrote.
$bin glue 127.0.0.1:18184 "$keys" & glue=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18184/" && break; sleep 0.1; done
export KEY_FILE="$keys"
# "REQS P99_MS" for SECS seconds against a port, with T wrk threads.
run() { wrk -t"$T" -c"$CONNS" -d"$1"s --latency -s benches/wrk/keys.lua "http://127.0.0.1:$2/api/v1/scans" \
  | awk '/Requests\/sec/ {r=$2} /^ +99%/ {p=$2} /Non-2xx/ {print "NON2XX " $4 > "/dev/stderr"}
         END { if (p ~ /us$/) { sub(/us$/, "", p); p = p / 1000 } else if (p ~ /ms$/) { sub(/ms$/, "", p) } else if (p ~ /s$/) { sub(/s$/, "", p); p = p * 1000 }; print r, p }'; }
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for T in $THREADS; do
  for port in 18181 18183 18184 18182; do run 3 "$port" >/dev/null; done
  nb=(); hb=(); gb=(); ng=(); pb=()
  for r in $(seq "$ROUNDS"); do
    read -r b bp < <(run "$SECS" 18181); read -r h hp < <(run "$SECS" 18183)
    read -r g gp < <(run "$SECS" 18184); read -r n np < <(run "$SECS" 18182)
    nb+=("$(ratio "$n" "$b")"); hb+=("$(ratio "$h" "$b")"); gb+=("$(ratio "$g" "$b")")
    ng+=("$(ratio "$n" "$g")"); pb+=("$(ratio "$np" "$bp")")
    echo "threads $T round $r: req/s bare $b, bare + headers $h, glue $g, NatLayer $n; p99 ms bare $bp, glue $gp, NatLayer $np"
  done
  echo "threads $T medians: NatLayer/bare $(median "${nb[@]}"), headers/bare $(median "${hb[@]}"), glue/bare $(median "${gb[@]}"), NatLayer/glue $(median "${ng[@]}"), p99 NatLayer/bare $(median "${pb[@]}")"
done
