#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component, from src/lib.rs. Installs the
# wasm32-wasip2 target with rustup when it is missing. Prints the component's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
target=wasm32-wasip2
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" >&2
fi
cargo build --release --target "$target" --quiet
cp -f "${CARGO_TARGET_DIR:-target}/$target/release/{{crate}}.wasm" {{name}}.wasm
echo "$PWD/{{name}}.wasm"
