#!/usr/bin/env bash
# Make the pinned toolchain of rust-toolchain.toml, with clippy, rustfmt and the
# wasm32-wasip2 target, available. A no-op when everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$channel" rustc --print target-libdir --target wasm32-wasip2 2>/dev/null | xargs test -d; then
  rustup toolchain install "$channel" --profile minimal --component clippy,rustfmt --target wasm32-wasip2
fi
if ! rustup component list --toolchain "$channel" --installed | grep -q '^clippy'; then
  rustup component add --toolchain "$channel" clippy rustfmt
fi
echo "toolchain: $channel with clippy, rustfmt and wasm32-wasip2"
