# ccx container image: the server, the example hooks built from source, and a config that
# listens on 0.0.0.0:8003 (which needs a token: pass CCX_TOKEN). See docs/container.md.
#
#   docker build -t ccx .
#   podman build --format docker -t ccx .     # --format docker keeps the HEALTHCHECK
#
# Layers go from the least to the most often changed: toolchains, then dependencies fetched
# from the lockfiles (Cargo.lock, hooks/Cargo.lock, hooks/requirements.txt,
# hooks/secret-scan/package-lock.json), then sources. Editing ccx's sources does not reinstall
# anything, and the hooks and the server are built in separate stages (in parallel with
# BuildKit), so a change to one does not rebuild the other. Every install is pinned, runs
# without prompts and has a network timeout, so a stalled download fails instead of hanging.
# Nothing is downloaded when the container runs.

ARG RUST_VERSION=1.95.0
# Node 20 is what the JavaScript hook's build is verified with; the lockfile needs Node >= 20.
ARG NODE_VERSION=20.20.2
ARG DEBIAN_RELEASE=bookworm

# Only the node binary and npm are taken from this image (Debian bookworm's nodejs is 18).
FROM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS node

# -- ccx --------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS ccx
ENV CARGO_TERM_COLOR=never CARGO_NET_RETRY=5 CARGO_HTTP_TIMEOUT=60
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Dependencies alone, against stub sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change. Cargo needs every target the manifest names to exist, so stub them all
# (lib, bins, and benches/tests/examples found by name). The real sources copied next may be
# older than the stubs, so ccx's own fingerprints are removed to make cargo rebuild it.
RUN set -eu; \
    mkdir -p src; echo 'fn main() {}' > src/main.rs; echo > src/lib.rs; \
    awk -F'"' '/^\[/ { s = $0 }; \
        /^path *=/ && (s == "[lib]" || s == "[[bin]]") { print $2 }; \
        /^name *=/ && s == "[[bench]]" { print "benches/" $2 ".rs" }; \
        /^name *=/ && s == "[[test]]" { print "tests/" $2 ".rs" }; \
        /^name *=/ && s == "[[example]]" { print "examples/" $2 ".rs" }' Cargo.toml \
    | while read -r f; do mkdir -p "$(dirname "$f")"; echo 'fn main() {}' > "$f"; done; \
    cargo build --release --locked; \
    rm -rf target/release/.fingerprint/ccx-*
# What ccx's build reads: its sources and the files `ccx hooks new` embeds (include_str!).
# scripts/check-image.sh fails when an include_str! names a file these lines do not copy.
COPY src/ src/
COPY templates/ templates/
COPY wit/ wit/
COPY hooks/Cargo.lock hooks/requirements.txt hooks/
COPY hooks/secret-scan/build.mjs hooks/secret-scan/package.json hooks/secret-scan/package-lock.json hooks/secret-scan/
RUN cargo build --release --locked && ./target/release/ccx --version

# -- the example hooks ------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS hooks
ENV DEBIAN_FRONTEND=noninteractive \
    CARGO_TERM_COLOR=never CARGO_NET_RETRY=5 CARGO_HTTP_TIMEOUT=60 \
    PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60 PIP_NO_CACHE_DIR=1 \
    npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false \
    npm_config_fetch_timeout=60000 npm_config_fetch_retries=3
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && node --version && npm --version \
    && rustup target add wasm32-wasip2
WORKDIR /src
# The toolchains hooks/build.sh would install, from the same pinned files, each in its own layer.
COPY hooks/requirements.txt hooks/
RUN python3 -m venv hooks/.venv \
    && hooks/.venv/bin/python -m pip install --quiet -r hooks/requirements.txt \
    && touch hooks/.venv/.installed
COPY hooks/secret-scan/package.json hooks/secret-scan/package-lock.json hooks/secret-scan/
RUN cd hooks/secret-scan && npm ci --loglevel=error
COPY wit/ wit/
COPY hooks/ hooks/
COPY ccx.toml ./
# Build the hooks the config names (build.sh sees its installs above as current: the lockfiles
# copied again are the same files), then adapt the config for a container: listen on all
# addresses, keep compiled hooks under /var/cache/ccx. The greps fail the build if ccx.toml
# changed so that the edits no longer apply.
RUN set -eu; \
    touch hooks/.venv/.installed hooks/secret-scan/node_modules/.package-lock.json; \
    hooks/build.sh $(sed -n 's|^path *= *"hooks/out/\([a-z0-9-]*\)\.wasm".*|\1|p' ccx.toml); \
    sed -e 's|^listen = "127\.0\.0\.1:8003"|listen = "0.0.0.0:8003"  |' \
        -e 's|^# cache_dir = .*|cache_dir = "/var/cache/ccx/hooks"    # a volume: see docs/container.md|' \
        ccx.toml > ccx.container.toml; \
    grep -q '^listen = "0.0.0.0:8003"' ccx.container.toml; \
    grep -q '^cache_dir = "/var/cache/ccx/hooks"' ccx.container.toml

# -- the image --------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
# tini as PID 1 reaps the orphans of jobs' background processes and forwards signals to ccx.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 ccx \
    && useradd --uid 10001 --gid 10001 --home-dir /home/ccx --create-home --shell /bin/sh ccx \
    && install -d -o 10001 -g 10001 /var/cache/ccx
COPY --from=hooks /src/ccx.container.toml /opt/ccx/ccx.toml
COPY --from=hooks /src/hooks/out/*.wasm /opt/ccx/hooks/out/
COPY --from=ccx /src/target/release/ccx /usr/local/bin/ccx
# Load every configured hook with this binary, so a broken image fails here, not at start.
# The compiled artifacts are dropped: they are keyed to the CPU, the cache belongs at run time.
RUN CCX_CONFIG=/opt/ccx/ccx.toml ccx hooks check && rm -rf /var/cache/ccx/hooks

# --- runtime settings: scripts/check-image.sh copies this block verbatim into its image ---
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/ccx \
    CCX_CONFIG=/opt/ccx/ccx.toml
WORKDIR /home/ccx
USER 10001:10001
EXPOSE 8003
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/usr/local/bin/ccx", "health"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/ccx"]
CMD ["serve"]
# --- end of runtime settings ---
