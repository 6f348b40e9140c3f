# Sourced by tests/*/setup.sh. `ensure_venv DIR` makes DIR/.venv a virtualenv holding exactly
# DIR/requirements.txt (pinned), reinstalling only when that file changed; a lock
# (DIR/.setup.lock) makes concurrent calls safe, so tests can run it themselves.
ensure_venv() {
    local here="$1"
    local venv="$here/.venv"
    local stamp="$venv/.installed"
    exec 9>"$here/.setup.lock"
    flock 9
    if [ ! -f "$stamp" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
        rm -rf "$venv"
        python3 -m venv "$venv" >&2
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60 PIP_NO_INPUT=1 \
            "$venv/bin/pip" install --quiet -r "$here/requirements.txt" >&2
        cp "$here/requirements.txt" "$stamp"
    fi
    exec 9>&-
}
