#!/usr/bin/env bash
# The fuzz targets of DESIGN §14 (fuzz/, see docs/fuzzing.md), FUZZ_SECS (default 60) seconds
# each, from the committed seeds into a fresh corpus. cargo fuzz needs the nightly toolchain;
# both are installed when missing. A crash fails CI and leaves its input in fuzz/artifacts/.
# `--dev`: an unoptimized build with debug assertions and overflow checks. On the 2-core CI
# machine it builds in about 3 minutes against 10 for the default optimized build; it runs
# event_batch at about three quarters of the optimized build's executions per second, and
# subscription_body near it (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECS:-60}
rustup run nightly rustc --version >/dev/null 2>&1 ||
    rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly fuzz build --dev -s none
for target in event_batch subscription_body; do
    corpus=$(mktemp -d)
    echo "-- $target, ${secs} s"
    log="$corpus.log"
    if ! cargo +nightly fuzz run --dev -s none "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        grep -v '^#' "$log" | tail -80
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log"
    rm -rf "$corpus" "$log"
done
