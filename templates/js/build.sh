#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component, from {{name}}.js with componentize-js, which
# it installs from npm (pinned by package-lock.json) on first use. Needs node 18+ and npm.
# Prints the component's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -e node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
fi
node build.mjs {{name}}.js wit {{world}} {{name}}.wasm >&2
echo "$PWD/{{name}}.wasm"
