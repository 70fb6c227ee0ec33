# chronus-gateway container image.
#   docker build -t chronus-gateway .
#   docker compose up            (see docker-compose.yml and docs/deployment.md)
#
# Stage 1 compiles the release binary; its dependency layer is cached until
# Cargo.toml or Cargo.lock change. Stage 2 is a slim Debian with only what the
# binary needs at run time, running as an unprivileged user.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- builder ------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# libpq for diesel's PostgreSQL backend; SQLite is compiled in (bundled).
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libpq-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, against placeholder sources: this layer is rebuilt only
# when the manifest or the lock file changes, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin chronus-gateway \
    && rm -rf src

# The real sources (migrations are embedded into the binary at compile time).
COPY src ./src
COPY migrations ./migrations
# touch: make cargo see the sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin chronus-gateway \
    && install -m 0755 target/release/chronus-gateway /usr/local/bin/chronus-gateway

# ---- runtime ------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: wss:// to Mistral and thoth; libpq5: PostgreSQL client
# library; curl: the health check below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libpq5 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 chronus \
    && useradd --system --uid 10001 --gid chronus --home-dir /var/lib/chronus-gateway \
       --shell /usr/sbin/nologin chronus \
    && mkdir -p /var/lib/chronus-gateway \
    && chown chronus:chronus /var/lib/chronus-gateway

COPY --from=builder /usr/local/bin/chronus-gateway /usr/local/bin/chronus-gateway

# Container defaults. The public listener must leave loopback to be reachable
# through a published port; the admin listener stays on loopback unless the
# deployment opts in (docker-compose.yml does, on its private network only).
# DATABASE_URL defaults to SQLite in the data volume; set postgres://… for
# PostgreSQL. Secrets (JWT_SECRET, API_KEY_ENCRYPTION_KEY) are never baked in.
ENV BIND_ADDR=0.0.0.0:8080 \
    ADMIN_BIND_ADDR=127.0.0.1:9091 \
    DATABASE_URL=/var/lib/chronus-gateway/chronus-gateway.db \
    RUST_LOG=info

USER chronus:chronus
WORKDIR /var/lib/chronus-gateway
VOLUME ["/var/lib/chronus-gateway"]
EXPOSE 8080

# Liveness from inside the container: the admin listener's /healthz (loopback
# works whether ADMIN_BIND_ADDR is 127.0.0.1:9091 or 0.0.0.0:9091).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9091/healthz"]

# No ENTRYPOINT, so `docker run IMAGE chronus-gateway dev-thoth …` (or `token`,
# `demo`) works as written. actix-web shuts down gracefully on SIGTERM.
CMD ["chronus-gateway", "serve"]
