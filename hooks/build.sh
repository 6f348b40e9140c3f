#!/usr/bin/env bash
# Builds every guest hook in hooks/ into a WebAssembly component under hooks/out/ and prints
# each component's path, one per line (progress goes to stderr).
#
#   hooks/build.sh              # all hooks
#   hooks/build.sh NAME...      # only these (e.g. `hooks/build.sh deny-dangerous`)
#
# It installs what it needs, pinned, on first use and only when a build needs it:
# - Rust: the `wasm32-wasip2` target via rustup; crates pinned by hooks/Cargo.lock.
# - Python: componentize-py from PyPI (version pinned in hooks/requirements.txt) into
#   hooks/.venv. Needs python3 (3.10+) with venv.
# - JavaScript: componentize-js and jco from npm with `npm ci` from the committed
#   package-lock.json. Needs node (18+) and npm.
# A hook whose output is newer than all its inputs (sources, the WIT, lockfiles) is not
# rebuilt; cargo does the same for the Rust hooks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wit="$root/wit"
out="$here/out"
target=wasm32-wasip2

# name:language:world. Rust crates are the members of hooks/Cargo.toml that build a cdylib.
hooks=(
    test-hook:rust:hook
    pre-only:rust:pre-hook
    input-guard:rust:input-hook
    output-test:rust:output-hook
    deny-dangerous:rust:pre-hook
    venv-setup:rust:pre-hook
    counter:rust:post-hook
    secret-redact:rust:output-hook
    agent-result-check:python:post-hook
    secret-scan:js:post-hook
    deny-substring:c:pre-hook
)
# Built only when named or with CCX_HOOKS_C=1: the C toolchain (zig from PyPI, wit-bindgen-cli
# compiled from crates.io) costs minutes and 100+ MB on a fresh machine.
optional_langs=" c "

log() { echo "build.sh: $*" >&2; }

selected=("$@")
wanted() { # NAME LANG
    if [ "${#selected[@]}" -eq 0 ]; then
        [[ "$optional_langs" != *" $2 "* || "${CCX_HOOKS_C:-}" = 1 ]]
        return
    fi
    for w in "${selected[@]}"; do [ "$w" = "$1" ] && return 0; done
    return 1
}
for w in "$@"; do
    printf '%s\n' "${hooks[@]}" | grep -q "^$w:" || { log "unknown hook: $w"; exit 2; }
done

# True when $1 is missing or older than any file under the other arguments.
stale() {
    local output="$1"
    shift
    [ -e "$output" ] || return 0
    [ -n "$(find "$@" -type f -newer "$output" -not -path '*/node_modules/*' \
        -not -path '*/__pycache__/*' -print -quit)" ]
}

# Moves $1 to $2 unless they are identical, so an unchanged hook keeps its mtime (a running
# server reloads hooks whose files change).
install_output() {
    if cmp -s "$1" "$2"; then rm -f "$1"; else mv -f "$1" "$2"; fi
}

mkdir -p "$out"
# One build at a time: tests, benchmarks and people may start this concurrently.
exec 9>"$out/.lock"
flock 9

# -- Rust ---------------------------------------------------------------------------------
rust=()
for h in "${hooks[@]}"; do
    IFS=: read -r name lang _ <<<"$h"
    if [ "$lang" = rust ] && wanted "$name" rust; then rust+=("$name"); fi
done
if [ "${#rust[@]}" -gt 0 ]; then
    if ! rustup target list --installed | grep -qx "$target"; then
        log "adding the rustup target $target"
        rustup target add "$target" >&2
    fi
    packages=()
    for name in "${rust[@]}"; do packages+=(-p "$name"); done
    # Keep the guests' target dir inside hooks/ even when the caller set one for the host crate.
    (cd "$here" && CARGO_TARGET_DIR="$here/target" nice -n 10 \
        cargo build --release --locked --target "$target" --quiet "${packages[@]}")
    for name in "${rust[@]}"; do
        cp -f "$here/target/$target/release/${name//-/_}.wasm" "$out/$name.wasm.tmp"
        install_output "$out/$name.wasm.tmp" "$out/$name.wasm"
    done
fi

# -- Python -------------------------------------------------------------------------------
venv="$here/.venv"
python_ready() {
    # The stamp is written after a successful install of exactly requirements.txt.
    if [ -x "$venv/bin/componentize-py" ] && ! stale "$venv/.installed" "$here/requirements.txt"; then
        return
    fi
    command -v python3 >/dev/null || { log "python3 is needed to build Python hooks"; exit 1; }
    log "installing componentize-py into hooks/.venv ($(cat "$here/requirements.txt"))"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$here/requirements.txt" >&2
    touch "$venv/.installed"
}

# -- JavaScript ---------------------------------------------------------------------------
js_ready() {
    local dir="$1"
    if [ -e "$dir/node_modules/.package-lock.json" ] &&
        ! stale "$dir/node_modules/.package-lock.json" "$dir/package-lock.json"; then
        return
    fi
    command -v npm >/dev/null || { log "node and npm are needed to build JavaScript hooks"; exit 1; }
    log "installing componentize-js and jco in hooks/$(basename "$dir") (npm ci)"
    (cd "$dir" && nice -n 10 npm ci --no-audit --no-fund --loglevel=error >&2)
}

# -- C --------------------------------------------------------------------------------------
tools="$here/.tools"
c_ready() {
    if [ ! -x "$venv/bin/zig" ] && ! "$venv/bin/python" -m ziglang version >/dev/null 2>&1 ||
        stale "$venv/.installed-c" "$here/requirements-c.txt"; then
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        log "installing zig into hooks/.venv ($(cat "$here/requirements-c.txt"))"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$here/requirements-c.txt" >&2
        touch "$venv/.installed-c"
    fi
    # Same version as the Rust guests' wit-bindgen crate (hooks/Cargo.toml).
    local want="0.61.0"
    if ! "$tools/bin/wit-bindgen" --version 2>/dev/null | grep -q "$want"; then
        log "installing wit-bindgen-cli $want into hooks/.tools (cargo install, a few minutes)"
        CARGO_TARGET_DIR="$here/target/tools" nice -n 10 \
            cargo install --quiet --locked "wit-bindgen-cli@$want" --root "$tools" >&2
    fi
    js_ready "$here/secret-scan" # for `jco new` and its WASI reactor adapter
}

built=()
for h in "${hooks[@]}"; do
    IFS=: read -r name lang world <<<"$h"
    wanted "$name" "$lang" || continue
    dir="$here/$name"
    dest="$out/$name.wasm"
    case "$lang" in
    rust) ;;
    python)
        if stale "$dest" "$dir" "$wit" "$here/requirements.txt"; then
            python_ready
            log "building $name (Python, componentize-py)"
            # VIRTUAL_ENV would make componentize-py bundle that venv's site-packages too.
            (cd "$dir" && nice -n 10 env -u VIRTUAL_ENV "$venv/bin/componentize-py" --quiet -d "$wit" -w "$world" \
                componentize app -o "$dest.tmp" >&2)
            mv -f "$dest.tmp" "$dest"
        fi
        ;;
    js)
        if stale "$dest" "$dir" "$wit"; then
            js_ready "$dir"
            log "building $name (JavaScript, componentize-js)"
            (cd "$dir" && nice -n 10 node build.mjs "$name.js" "$wit" "$world" "$dest" >&2)
        fi
        ;;
    c)
        if stale "$dest" "$dir" "$wit" "$here/requirements-c.txt"; then
            c_ready
            log "building $name (C, wit-bindgen c + zig cc + jco new)"
            gen="$here/target/c/$name"
            rm -rf "$gen" && mkdir -p "$gen"
            "$tools/bin/wit-bindgen" c "$wit" --world "$world" --out-dir "$gen" >/dev/null
            stem="${world//-/_}"
            nice -n 10 "$venv/bin/python" -m ziglang cc -target wasm32-wasi -mexec-model=reactor \
                -Os -Wall -I"$gen" "$dir"/*.c "$gen/$stem.c" "$gen/${stem}_component_type.o" \
                -o "$gen/core.wasm" >&2
            "$here/secret-scan/node_modules/.bin/jco" new "$gen/core.wasm" --wasi-reactor \
                -o "$dest.tmp" >&2
            mv -f "$dest.tmp" "$dest"
        fi
        ;;
    esac
    built+=("$dest")
done
printf '%s\n' "${built[@]}"
