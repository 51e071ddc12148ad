# The lobby-relay container image.
#
#   docker build -t lobby-relay .
#       The full build (the default target, `runtime`): a release build in a
#       Rust image, then a small Debian image with the binary, CA
#       certificates and curl, run as a non-root user.
#
#   docker build --target runtime-prebuilt -t lobby-relay -f Dockerfile DIR
#       For a machine where the Rust image cannot be had (no registry): the
#       same runtime around a binary built on the host, `cargo build
#       --release --locked --bin lobby-relay`, copied into an otherwise empty
#       folder DIR (the build context). The binary must be linked against a
#       glibc no newer than the runtime image's (Debian 12 has 2.36).
#
# Build arguments, all optional:
#   RUST_IMAGE      the builder             [rust:1-bookworm]
#   RUNTIME_IMAGE   the runtime base        [debian:bookworm-slim]; any Debian
#                   12 (or compatible) image, e.g. one built offline with
#                   mmdebstrap and `docker import` (scripts/compose-local.sh)
#
# The stages are in this order so that the classic builder (no BuildKit),
# which builds every stage up to the --target, never needs the Rust image
# for --target runtime-prebuilt. There is no `# syntax=` line on purpose:
# BuildKit would pull the Dockerfile frontend image from a registry.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- runtime-base: everything of the runtime image but the binary ------------
FROM ${RUNTIME_IMAGE} AS runtime-base

# ca-certificates: the usual CA bundle, for anything the relay verifies over
# TLS. curl: the HEALTHCHECK below, and for operators inside the container
# (`curl -s localhost:8765/metrics`). curl and its libraries add about 6 MB;
# the alternative, an HTTP request typed out on bash's /dev/tcp, saves that
# but leaves operators with no HTTP client in the container. Both packages
# are installed from Debian unless the base image has them already (a base
# built offline).
# The relay runs as an unprivileged user with a fixed uid/gid, 10001, so that
# orchestrators can check `runAsNonRoot`.
RUN set -eu; \
    if ! command -v curl >/dev/null 2>&1 || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 lobby-relay; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lobby-relay

LABEL org.opencontainers.image.title="lobby-relay" \
      org.opencontainers.image.description="A real-time WebSocket relay for multiplayer games" \
      org.opencontainers.image.licenses="MIT"

# Every option of the README's table can be given as an environment variable
# (docker run -e LOBBY_RELAY_REDIS_URL=redis://redis:6379/ ...).
ENV LOBBY_RELAY_LISTEN=0.0.0.0:8765 \
    LOBBY_RELAY_LOG_FORMAT=json
EXPOSE 8765
USER 10001:10001

# Liveness: /healthz answers 200 while the process runs. (Readiness, /readyz,
# is the load balancer's business; docker-compose.yml checks it too.) If you
# move the port with LOBBY_RELAY_LISTEN or serve wss:// directly
# (--tls-cert), override this check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8765/healthz || exit 1

# The process gets SIGTERM on `docker stop`: it reports not-ready, waits
# LOBBY_RELAY_DRAIN_DELAY, closes its connections with 1012 and exits within
# LOBBY_RELAY_SHUTDOWN_TIMEOUT (10 s; give `docker stop` at least that).
ENTRYPOINT ["/usr/local/bin/lobby-relay"]
CMD ["serve"]

# --- runtime-prebuilt: the runtime around a binary built elsewhere -----------
# The build context is a folder that holds the binary, named lobby-relay, and
# nothing else. Copying the whole context rather than one file by name
# matters to the classic builder: it runs this stage in the default build too,
# from the repository's context, which has no binary (it copies the sources
# into this stage instead, and the stage is thrown away).
FROM runtime-base AS runtime-prebuilt
COPY . /usr/local/bin/

# --- builder: the release build ------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# Dependencies first, in a layer of their own: build the locked dependency
# graph against empty targets, so that a change under src/ rebuilds only the
# crate itself. (Both binaries' paths must exist for Cargo to read the
# manifest; only lobby-relay is built. The workspace's other member, the
# Rust client, needs its manifest and an empty library: it is not built.)
COPY Cargo.toml Cargo.lock ./
COPY clients/rust/Cargo.toml ./clients/rust/Cargo.toml
RUN mkdir -p src/bin/bench clients/rust/src \
    && echo 'fn main() {}' >src/main.rs \
    && echo 'fn main() {}' >src/bin/bench/main.rs \
    && : >src/lib.rs \
    && : >clients/rust/src/lib.rs \
    && cargo build --release --locked --bin lobby-relay \
    && rm -rf src

COPY src ./src
# The JavaScript client the relay serves at /client.js (include_str!).
COPY clients/js/lobby-relay.js ./clients/js/lobby-relay.js
# COPY keeps the files' modification times, which may be older than the
# placeholder build above: touch the crate roots so that Cargo rebuilds.
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin lobby-relay \
    && install -D -m 0755 target/release/lobby-relay /out/lobby-relay

# --- runtime: the default target -------------------------------------------------
FROM runtime-base AS runtime
COPY --from=builder /out/lobby-relay /usr/local/bin/lobby-relay
