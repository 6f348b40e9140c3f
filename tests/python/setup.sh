#!/usr/bin/env bash
# Creates tests/python/.venv with exactly requirements.txt (the official MCP Python SDK, pinned)
# and prints the path of its python. Idempotent and safe to run concurrently (a lock), so the
# integration tests call it themselves; .ci/run calls it first so a failure shows early.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../venv.sh"
ensure_venv "$here"
echo "$here/.venv/bin/python"
