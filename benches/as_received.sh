#!/usr/bin/env bash
# The "as received" comparison with each contender in a fresh process, contenders alternating,
# ROUNDS rounds (3 by default); prints "round tenants contender median-time" lines. In one
# process the contender benched last inherits the heap the others left (100,000 prebuilt
# requests a batch), which moved it by up to 50 % here.
# Usage: bash benches/as_received.sh   (ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --bench layers --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and "layers" in m["executable"]][0])')
for r in $(seq "${ROUNDS:-3}"); do
  for c in "bare handler" "tower_governor" "glue" "floor" "duties" "NatLayer"; do
    "$bin" --bench "as received/[0-9]+ tenants/$c" 2>&1 \
      | grep -E "^as received|time:" | paste - - | tr -s ' ' \
      | sed -E "s/^as received\/([0-9]+) tenants\/([^ :(]+).*time: \[[^ ]+ [^ ]+ ([0-9.]+ [nµ]s).*/$r \1 \2 \3/"
  done
done
