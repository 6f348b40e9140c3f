#!/usr/bin/env bash
# Creates tests/python/.venv with exactly requirements.txt (the official MCP Python SDK, pinned)
# and prints the path of its python. Idempotent and safe to run concurrently (a lock), so the
# integration tests call it themselves; .ci/run calls it first so a failure shows early.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed"
exec 9>"$here/.setup.lock"
flock 9
if [ ! -f "$stamp" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60 PIP_NO_INPUT=1 \
        "$venv/bin/pip" install --quiet -r "$here/requirements.txt" >&2
    cp "$here/requirements.txt" "$stamp"
fi
echo "$venv/bin/python"
