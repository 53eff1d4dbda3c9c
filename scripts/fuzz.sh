#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each), seeded with the captured
# ClientHellos. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
. scripts/lib/tools.sh
ensure_cargo_fuzz

export RUSTC_BOOTSTRAP=1
corpus=fuzz/corpus/client_hello
mkdir -p "$corpus" fuzz/corpus/proxy_v2 fuzz/corpus/san fuzz/corpus/resume
printf 'bamf://kind/user\nbamf://user/alice' > fuzz/corpus/san/user
# Frame headers: RESUME (received 0, window 4 MiB), DATA (length 3), ACK 3, FIN, PING, CLOSE.
printf '\001\001\000\000\000\000\000\000\000\000\000\100\000\000\002\000\003\003\000\000\000\000\000\000\000\003\004\005\006\001' \
  > fuzz/corpus/resume/frames
cp proto/testdata/client_hello/*.bin "$corpus/"
for target in client_hello proxy_v2 san resume; do
  echo "fuzz: $target for ${seconds}s"
  log="fuzz/$target.log"
  status=0
  cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=40000 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED (exit $status; reproducer in fuzz/artifacts/$target)"
    exit 1
  fi
done
echo "fuzz: no crashes"
