#!/usr/bin/env bash
# Builds {{name}}.wasm, a WebAssembly component, from app.py with componentize-py, which it
# installs (pinned in requirements.txt) into .venv on first use. Needs python3 with venv.
# Prints the component's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ ! -x .venv/bin/componentize-py ] || [ requirements.txt -nt .venv/.installed ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
    touch .venv/.installed
fi
# Without VIRTUAL_ENV: componentize-py would bundle that venv's site-packages too.
env -u VIRTUAL_ENV .venv/bin/componentize-py --quiet -d wit -w {{world}} componentize app -o {{name}}.wasm >&2
echo "$PWD/{{name}}.wasm"
