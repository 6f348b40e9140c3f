#!/usr/bin/env bash
# Offline check of ccx's container image, for machines that can build images but cannot pull
# or run them (see docs/container.md).
#
#   scripts/check-image.sh [--require-hooks] [--keep]
#
# 1. Builds a static ccx (release, x86_64-unknown-linux-musl; honours CARGO_TARGET_DIR).
# 2. Builds an image FROM scratch with `podman build --format docker` (no pull, no network):
#    the static ccx, Debian's static busybox as /bin/sh (and its applets) so jobs can run,
#    Debian's static tini as PID 1, the example hooks from hooks/out/ (build them with
#    hooks/build.sh; hooks not built are left out of the image's config, or fail the check
#    with --require-hooks), and ccx.toml adapted as the Dockerfile adapts it. The user,
#    environment, port, HEALTHCHECK, ENTRYPOINT and CMD are the Dockerfile's own: its
#    "runtime settings" block is copied verbatim.
# 3. Checks with `podman image inspect` that user, entrypoint, cmd, healthcheck and exposed
#    port are as intended, and exits 1 otherwise.
# 4. As root, also checks the image's files without a container runtime: it copies the image's
#    filesystem out (`podman image mount`) and, chrooted into it as the image's user, runs
#    `ccx hooks check` on the image's config, starts `ccx serve` on a loopback port and runs the
#    HEALTHCHECK's command against it. (Running the image itself is documented, not tested.)
#
# Needs: podman, the rustup target x86_64-unknown-linux-musl, busybox-static and tini
# (Debian packages). The image is tagged localhost/ccx-check:latest (CCX_CHECK_IMAGE) and
# removed at the end unless --keep is given.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target=x86_64-unknown-linux-musl
image="${CCX_CHECK_IMAGE:-localhost/ccx-check:latest}"
busybox="${BUSYBOX:-/bin/busybox}"
tini="${TINI_STATIC:-/usr/bin/tini-static}"
require_hooks=0
keep=0
for arg in "$@"; do
    case "$arg" in
    --require-hooks) require_hooks=1 ;;
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-image: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# What the image must say. Change these together with the Dockerfile's runtime settings.
want_user='10001:10001'
want_entrypoint='["/usr/bin/tini","--","/usr/local/bin/ccx"]'
want_cmd='["serve"]'
want_ports='{"8003/tcp":{}}'
want_health_test='["CMD","/usr/local/bin/ccx","health"]'
want_workdir='/home/ccx'
want_config='/opt/ccx/ccx.toml'

log() { echo "check-image: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
size() { du -h --apparent-size "$1" | cut -f1; }

# -- prerequisites ------------------------------------------------------------------------------
command -v podman >/dev/null || die "podman is missing (apt-get install podman)"
rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    die "the rustup target $target is missing (rustup target add $target)"
is_static() { { ldd "$1" 2>&1 || true; } | grep -Eq 'not a dynamic executable|statically linked'; }
{ [ -x "$busybox" ] && is_static "$busybox"; } ||
    die "$busybox is not a static busybox (apt-get install busybox-static, or set BUSYBOX)"
{ [ -x "$tini" ] && is_static "$tini"; } ||
    die "$tini is not a static tini (apt-get install tini, or set TINI_STATIC)"

work="$(mktemp -d "${TMPDIR:-/tmp}/ccx-check-image.XXXXXX")"
server_pid=
mounted=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    if [ -n "$mounted" ]; then podman image unmount "$image" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
    if [ "$keep" = 0 ]; then podman rmi -f "$image" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# -- 0. the Dockerfile's ccx stage copies every file ccx's build embeds ----------------------------
# (That stage copies an explicit list, for its cache; the Dockerfile cannot be built here.)
copied="$(awk '/^FROM .* AS ccx$/ { on = 1; next }; /^FROM / { on = 0 };
    on && /^COPY / { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' "$root/Dockerfile")"
[ -n "$copied" ] || die "Dockerfile: no COPY in a stage named ccx"
while IFS=: read -r file include; do
    rel="$(realpath -ms --relative-to="$root" "$(dirname "$root/$file")/$include")"
    covered=0
    for src in $copied; do
        case "$rel" in "${src%/}" | "${src%/}"/*) covered=1 ;; esac
    done
    [ "$covered" = 1 ] || die "Dockerfile: $file embeds $rel, which the ccx stage does not COPY"
done < <(cd "$root" && grep -rEo 'include_(str|bytes)!\("[^"]+"\)' src |
    sed -E 's/^([^:]+):include_(str|bytes)!\("([^"]+)"\)$/\1:\3/')
log "ok   the Dockerfile's ccx stage copies every file src/ embeds"

# -- 1. static ccx --------------------------------------------------------------------------------
log "building a static ccx (cargo build --release --locked --target $target)"
start=$(date +%s)
(cd "$root" && nice -n 15 cargo build --release --locked --target "$target" --quiet)
build_secs=$(($(date +%s) - start))
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin="$target_dir/$target/release/ccx"
is_static "$bin" || die "$bin is not statically linked"
log "static ccx: $(size "$bin") ($(stat -c %s "$bin") bytes), cargo took ${build_secs}s"

# -- 2. the image's files -------------------------------------------------------------------------
ctx="$work/context"
rootfs="$ctx/rootfs"
mkdir -p "$rootfs"/{bin,usr/bin,usr/local/bin,etc,tmp,home,var/cache,opt/ccx/hooks/out} "$ctx/owned"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$bin" "$rootfs/usr/local/bin/ccx"
install -m 0755 "$tini" "$rootfs/usr/bin/tini"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
ln -s ../../bin/busybox "$rootfs/usr/bin/env" # for #!/usr/bin/env scripts
printf 'root:x:0:0:root:/root:/bin/sh\nccx:x:10001:10001:ccx:/home/ccx:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nccx:x:10001:\n' >"$rootfs/etc/group"

# The config, adapted as the Dockerfile's hooks stage does (listen on all addresses, compiled
# hooks under /var/cache/ccx), with every [[hooks]] entry whose component is not built left out.
missing=()
included=0
awk -v out="$root/hooks/out" '
    function flush() {
        if (block == "") return
        if (path == "" || system("test -f \"" out "/" path "\"") == 0) printf "%s", block
        else print "MISSING " path > "/dev/stderr"
        block = ""; path = ""
    }
    /^\[\[hooks\]\]/ { flush(); inhook = 1 }
    /^\[/ && !/^\[\[hooks\]\]/ { flush(); inhook = 0 }
    inhook {
        block = block $0 "\n"
        if (match($0, /^path *= *"hooks\/out\/[^"]*"/)) { p = substr($0, RSTART, RLENGTH); sub(/^path *= *"hooks\/out\//, "", p); sub(/"$/, "", p); path = p }
        next
    }
    { print }
    END { flush() }' "$root/ccx.toml" 2>"$work/missing" |
    sed -e 's|^listen = "127\.0\.0\.1:8003"|listen = "0.0.0.0:8003"  |' \
        -e 's|^# cache_dir = .*|cache_dir = "/var/cache/ccx/hooks"    # a volume: see docs/container.md|' \
        >"$rootfs/opt/ccx/ccx.toml"
grep -q '^listen = "0.0.0.0:8003"' "$rootfs/opt/ccx/ccx.toml" || die "ccx.toml: the listen edit no longer applies"
grep -q '^cache_dir = "/var/cache/ccx/hooks"' "$rootfs/opt/ccx/ccx.toml" || die "ccx.toml: the cache_dir edit no longer applies"
while read -r _ name; do missing+=("$name"); done <"$work/missing"
while read -r f; do
    install -m 0644 "$root/hooks/out/$f" "$rootfs/opt/ccx/hooks/out/$f"
    included=$((included + 1))
done < <(sed -n 's|^path *= *"hooks/out/\([^"]*\)".*|\1|p' "$rootfs/opt/ccx/ccx.toml")
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$require_hooks" = 1 ] && die "hooks not built: ${missing[*]} (run hooks/build.sh)"
    log "NOTE: hooks/out lacks ${missing[*]}: left out of the image's config (hooks/build.sh builds them)"
fi
log "image config: $included hooks"

# The Containerfile: the files, then the Dockerfile's runtime settings block, verbatim.
settings="$(sed -n '/^# --- runtime settings/,/^# --- end of runtime settings/p' "$root/Dockerfile")"
[ -n "$settings" ] || die "no runtime settings block in the Dockerfile"
{
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    echo "COPY --chown=10001:10001 owned/ /home/ccx/"
    echo "COPY --chown=10001:10001 owned/ /var/cache/ccx/"
    echo "$settings"
} >"$ctx/Containerfile"

# -- 3. build and inspect -----------------------------------------------------------------------
log "podman build --format docker -t $image (FROM scratch, no pull, no network)"
start=$(date +%s)
podman build --quiet --format docker --pull=never --network=none \
    -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null
log "image built in $(($(date +%s) - start))s"

failures=0
expect() { # WHAT GOT WANT
    if [ "$2" = "$3" ]; then
        log "ok   $1 = $2"
    else
        log "FAIL $1 = $2, want $3"
        failures=$((failures + 1))
    fi
}
inspect() { podman image inspect --format "$1" "$image"; }
expect user "$(inspect '{{.Config.User}}')" "$want_user"
expect entrypoint "$(inspect '{{json .Config.Entrypoint}}')" "$want_entrypoint"
expect cmd "$(inspect '{{json .Config.Cmd}}')" "$want_cmd"
expect exposed-ports "$(inspect '{{json .Config.ExposedPorts}}')" "$want_ports"
expect healthcheck "$(inspect '{{json .HealthCheck.Test}}')" "$want_health_test"
expect workdir "$(inspect '{{.Config.WorkingDir}}')" "$want_workdir"
expect env-CCX_CONFIG "$(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^CCX_CONFIG=//p')" "$want_config"
[ "$(inspect '{{.Config.User}}' | cut -d: -f1)" != 0 ] || { log "FAIL the image runs as root"; failures=$((failures + 1)); }
image_bytes="$(inspect '{{.Size}}')"
log "image size: $((image_bytes / 1024 / 1024)) MiB ($image_bytes bytes)"
[ "$failures" = 0 ] || die "$failures image settings are not as intended"

# -- 4. the image's files, chrooted -------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
    log "skipping the chroot checks (they need root)"
    log "OK"
    exit 0
fi
uid="${want_user%%:*}"
mnt="$(podman image mount "$image")"
mounted=1
cp -a "$mnt" "$work/fs"
podman image unmount "$image" >/dev/null
mounted=
for path in /usr/local/bin/ccx /usr/bin/tini /bin/sh "$want_config"; do
    [ -e "$work/fs$path" ] || die "the image has no $path"
done
for dir in "$want_workdir" /var/cache/ccx; do
    [ "$(stat -c %u "$work/fs$dir")" = "$uid" ] || die "$dir is not owned by uid $uid"
done
[ "$(stat -c %u "$work/fs/var/cache")" = 0 ] || die "/var/cache is not owned by root"
mapfile -t image_env < <(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
run() { # COMMAND...: as the image's user, with its environment, chrooted into its files
    env -i "${image_env[@]}" chroot --userspec="$want_user" "$work/fs" \
        /bin/sh -c "cd $want_workdir && exec \"\$@\"" sh "$@"
}
out="$(run /usr/local/bin/ccx --version 2>&1)" || die "ccx --version in the image: $out"
log "ok   ccx --version: $out"
out="$(run /bin/sh -c 'id -u; echo job-ok' 2>&1)" || die "/bin/sh in the image: $out"
[ "$out" = "$uid"$'\n'"job-ok" ] || die "/bin/sh in the image printed: $out"
log "ok   /bin/sh runs jobs as uid $uid"
start=$(date +%s)
out="$(run /usr/local/bin/ccx hooks check 2>&1)" || die "ccx hooks check in the image: $out"
log "ok   ccx hooks check: $out ($(($(date +%s) - start))s, artifact cache: $(du -sh "$work/fs/var/cache/ccx" | cut -f1))"

# Serve from the image's files on a loopback port and probe it with the HEALTHCHECK's command.
port=$((20000 + RANDOM % 20000))
health_url="http://127.0.0.1:$port/healthz"
out="$(run env CCX_HEALTH_URL="$health_url" /usr/local/bin/ccx health 2>&1)" &&
    die "ccx health answered 0 with no server on port $port: $out"
log "ok   ccx health exits 1 with no server: $out"
# Not through run(): $! must be the server itself (env, chroot and sh all exec).
env -i "${image_env[@]}" CCX_LISTEN="127.0.0.1:$port" CCX_TOKEN=check-image \
    chroot --userspec="$want_user" "$work/fs" /bin/sh -c "cd $want_workdir && exec /usr/local/bin/ccx serve" \
    >"$work/serve.log" 2>&1 &
server_pid=$!
healthy=0
for _ in $(seq 1 60); do
    if out="$(run env CCX_HEALTH_URL="$health_url" /usr/local/bin/ccx health 2>&1)"; then
        healthy=1
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
done
[ "$healthy" = 1 ] || { cat "$work/serve.log" >&2; die "ccx serve from the image never became healthy"; }
log "ok   HEALTHCHECK command against ccx serve from the image: $out"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=
log "OK (static ccx $(size "$bin"), built in ${build_secs}s; image $((image_bytes / 1024 / 1024)) MiB)"
