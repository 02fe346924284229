# syntax=docker/dockerfile:1
# Builds cr-sqlite, the browser peer and the two binaries with the same scripts as CI, then ships
# one small runtime image per binary (targets `node` and `relay`), each running as a non-root
# user with a HEALTHCHECK on its /health. docker-compose.hybrid.yml builds both targets.
#
#   docker build --target node -t todo-hybrid/node .
#   docker build --target relay -t todo-hybrid/relay .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev npm python3 \
 && rm -rf /var/lib/apt/lists/*
# cr-sqlite 0.16.3 builds on this nightly (ci/build-crsqlite.sh); the browser peer needs wasm32.
RUN rustup toolchain install nightly-2023-10-05 --profile minimal \
 && rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
ENV TODO_CACHE=/cache
# The cache mount keeps cargo's target dir, cr-sqlite, wasm-bindgen-cli and binaryen between
# builds, as ~/.cache/todo-hybrid does on a developer's machine.
RUN --mount=type=cache,target=/cache \
    ci/build-crsqlite.sh \
 && ci/build-wasm.sh \
 && cargo build --release --locked -p todo-node -p todo-relay \
 && mkdir -p /out \
 && cp /cache/target/release/todo-node /cache/target/release/todo-relay /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /data app
USER app
WORKDIR /data
ENV DATA_DIR=/data LOG=info

FROM runtime AS node
COPY --from=build /out/todo-node /usr/local/bin/todo-node
ENV HOST=0.0.0.0 PORT=3000
EXPOSE 3000 4101 4101/udp
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["todo-node"]

FROM runtime AS relay
COPY --from=build /out/todo-relay /usr/local/bin/todo-relay
ENV HOST=0.0.0.0 HTTP_PORT=4000
EXPOSE 4000 4001 4001/udp 4002
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${HTTP_PORT}/health" >/dev/null || exit 1
ENTRYPOINT ["todo-relay"]
