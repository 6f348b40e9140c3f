#!/usr/bin/env bash
# Builds the guest hooks in this workspace as wasm32-wasip2 components and copies them to
# hooks/out/. Needs only rustup and cargo; cargo skips the build when nothing changed.
# Prints the path of each component it produced, one per line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2

if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" >&2
fi

cd "$here"
# Keep the guests' target dir inside hooks/ even when the caller set one for the host crate.
CARGO_TARGET_DIR="$here/target" nice -n 10 cargo build --release --target "$target" --quiet

mkdir -p "$here/out"
for crate in test-hook pre-only; do
    name="${crate//-/_}.wasm"
    cp -f "$here/target/$target/release/$name" "$here/out/$crate.wasm.tmp"
    mv -f "$here/out/$crate.wasm.tmp" "$here/out/$crate.wasm"
    echo "$here/out/$crate.wasm"
done
