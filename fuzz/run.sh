#!/usr/bin/env bash
# Runs each fuzz target for SECS seconds (default 30) on its corpus in fuzz/corpus/, which
# grows with what libFuzzer finds. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Longer runs: `fuzz/run.sh 3600`.
#   router_body  the router's parsing of request bodies, split at arbitrary points
#   router_stream  RouterStream under arbitrary peer frames and local operations
#   token        token checking on arbitrary authorization values, rechecked independently
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in router_body router_stream token; do
  mkdir -p "fuzz/corpus/$target"
  echo "fuzz: $target for ${secs}s"
  status=0
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E 'cov: ' "$log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
