#!/usr/bin/env bash
# Runs every fuzz target for a short while (default 20 s each) with cargo-fuzz on the
# nightly toolchain; installs cargo-fuzz from crates.io when it is missing. A crash fails
# the run and leaves the reproducer under <crate>/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi
for dir in control/sts/fuzz control/crypto/fuzz gateway/proxy/fuzz; do
  for target in $(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | grep -v -- '-fuzz$'); do
    echo "fuzz-smoke: $dir $target (${seconds}s)"
    (cd "$(dirname "$dir")" && cargo +nightly fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048)
  done
done
