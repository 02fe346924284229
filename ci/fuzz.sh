#!/usr/bin/env bash
# Fuzzes every decoder that takes network or form input (fuzz/fuzz_targets/), one target after
# another, with cargo fuzz (libFuzzer + AddressSanitizer) on a nightly toolchain. A single
# allocation over 64 MiB (-malloc_limit_mb: no decoder may reserve that much for any input), or
# the process over 1 GiB (-rss_limit_mb, with ASan's quarantine cut to 64 MiB so that freed
# memory awaiting reuse does not count as growth), is a finding like a crash.
#
#   ci/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     (default 60 s, every target)
#
# Prints, per target: executions, executions/s, corpus size, findings. Exits non-zero on any
# finding; the input that caused it is in fuzz/artifacts/<target>/ (commit it under
# fuzz/seeds/<target>/ with the fix, so it is replayed on every later run). The grown corpus
# lives in $TODO_CACHE/fuzz-corpus (not committed); the small seeds in fuzz/seeds are.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire_batch sync_request sync_page json_changes pk form_rules form_bodies)
toolchain=${FUZZ_TOOLCHAIN:-nightly}

rustup run "$toolchain" rustc --version >/dev/null 2>&1 ||
  { echo "installing rust toolchain $toolchain (cargo fuzz needs nightly)"; rustup toolchain install "$toolchain" --profile minimal; }
command -v cargo-fuzz >/dev/null ||
  { echo "installing cargo-fuzz (about 2 minutes, once)"; cargo install --locked cargo-fuzz; }

# Input sizes that fit each decoder's real inputs (a sync request is 29 bytes).
max_len() {
  case $1 in
    sync_request) echo 64 ;;
    pk) echo 512 ;;
    form_bodies | form_rules) echo 4096 ;;
    *) echo 65536 ;;
  esac
}

corpus_root=$TODO_CACHE/fuzz-corpus
failed=0
printf '%-14s %12s %10s %8s %s\n' target execs execs/s corpus findings
for target in "${targets[@]}"; do
  corpus=$corpus_root/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  log=$(mktemp)
  status=0
  (cd fuzz && ASAN_OPTIONS=quarantine_size_mb=64 cargo "+$toolchain" fuzz run --release --target-dir "$CARGO_TARGET_DIR/fuzz" \
    "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" \
    -rss_limit_mb=1024 -malloc_limit_mb=64 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" >"$log" 2>&1) || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^stat::.*//; s/.*Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  [ -n "$secs" ] || secs=$seconds
  findings=$(ls "fuzz/artifacts/$target" | wc -l)
  if [ "$status" -ne 0 ] || [ "$findings" -gt 0 ]; then
    failed=1
    tail -30 "$log"
  fi
  printf '%-14s %12s %10s %8s %s\n' "$target" "${execs:-?}" \
    "$(( ${execs:-0} / (secs > 0 ? secs : 1) ))" "$(ls "$corpus" | wc -l)" "$findings"
  rm -f "$log"
done
exit "$failed"
