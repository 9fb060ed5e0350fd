# syntax=docker/dockerfile:1
# Release image for the comfy-reality gRPC server.
#
# cargo-chef splits the build so that dependencies (the slow part) are cached in their own layer
# and rebuilt only when Cargo.toml or Cargo.lock change. The builder is pinned to Debian bookworm
# on purpose: the binary links against the builder's glibc, so it must not be newer than the
# runtime image's (bookworm-slim). Bump cargo-chef, Rust and Debian together.

FROM lukemathwalker/cargo-chef:0.1.78-rust-1.95-bookworm AS chef
WORKDIR /app

# Compute the dependency recipe from the manifests only.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Build dependencies (cached layer), then the server. build.rs compiles proto/ with protox,
# so no protoc is needed in the image.
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin comfy-reality

FROM debian:bookworm-slim AS runtime
# DL3008: ca-certificates is taken at whatever version the pinned Debian release serves; pinning
# an exact Debian revision breaks the build each time the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 comfy-reality \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/comfy-reality --shell /usr/sbin/nologin comfy-reality \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/comfy-reality

COPY --from=builder /app/target/release/comfy-reality /usr/local/bin/comfy-reality

# It listens on all interfaces, so it needs `[auth]` configured (a mounted --config file or
# COMFY_REALITY__AUTH__* variables; see the README's Security section) or, on a network you
# trust, COMFY_REALITY__AUTH__ALLOW_ANONYMOUS=true: without either it refuses to start.
# Settings come from the environment, so `docker run -e COMFY_REALITY__SERVICE__LISTEN=...`
# moves the port and the HEALTHCHECK (which reads the same configuration) follows it.
ENV COMFY_REALITY__SERVICE__DATA_DIR=/var/lib/comfy-reality \
    COMFY_REALITY__SERVICE__LISTEN=0.0.0.0:50051 \
    COMFY_REALITY__SERVICE__METRICS_LISTEN=0.0.0.0:9090
WORKDIR /var/lib/comfy-reality
# The durable store (comfy-reality.db) and downloaded artifacts live here.
VOLUME ["/var/lib/comfy-reality"]
USER 10001:10001

# 50051: gRPC (tasks, health, reflection); 9090: Prometheus metrics.
EXPOSE 50051 9090

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/comfy-reality", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/comfy-reality"]
CMD ["serve"]
