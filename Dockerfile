# syntax=docker/dockerfile:1.7
#
# One image, every Switchboard binary. The command picks the binary:
#
#   docker build -t switchboard .
#   docker run --rm -p 8000:8000 -p 8001:8001 switchboard terminator --etcd http://etcd:2379
#   docker run --rm switchboard aggregator --help
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts
# and `COPY --chmod`. testkit/tests/packaging.rs checks that the binaries
# copied below are exactly the workspace's [[bin]] targets and builds them
# with cargo; docker-compose.yml runs the stack from this image.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

# ---------------------------------------------------------------- build ----
# rust:<version>-<debian> carries gcc (mimalloc's C build). Added here:
#   protobuf-compiler  etcd-client (discovery) generates its gRPC code at
#   libprotobuf-dev    build time with protoc, which needs the well-known
#                      types (descriptor.proto) that libprotobuf-dev holds
# No ZeroMQ library: the bus speaks ZMTP itself.
# The toolchain must be at least the newest rust-version in Cargo.lock
# (fjall/lsm-tree: 1.90).
FROM rust:${RUST_VERSION}-${DEBIAN} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target directories are cache mounts (kept between builds,
# never part of a layer), so the binaries are copied out of target/ in the
# same step. Release profile: fat LTO, one codegen unit (Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin terminator --bin aggregator --bin backend-svc --bin loadtest --bin baseline \
        --bin bus-keygen --bin gen-cert --bin sbctl \
 && mkdir -p /out \
 && cp target/release/terminator target/release/aggregator target/release/backend-svc \
       target/release/loadtest target/release/baseline \
       target/release/bus-keygen target/release/gen-cert target/release/sbctl /out/

# -------------------------------------------------------------- runtime ----
FROM debian:${DEBIAN}-slim AS runtime
# curl        the HEALTHCHECK's HTTP client (and the operator's, inside the
#             container); none of the binaries is an HTTP client
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so orchestrators can check runAsNonRoot and
# volumes can be prepared for it. Its home holds the backend-svc store; a
# named volume mounted there starts out owned by this user.
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid switchboard \
        --home-dir /var/lib/switchboard --shell /usr/sbin/nologin switchboard \
 && install -d -o switchboard -g switchboard -m 0750 /var/lib/switchboard

COPY --from=build /out/terminator /usr/local/bin/terminator
COPY --from=build /out/aggregator /usr/local/bin/aggregator
COPY --from=build /out/backend-svc /usr/local/bin/backend-svc
COPY --from=build /out/loadtest /usr/local/bin/loadtest
COPY --from=build /out/baseline /usr/local/bin/baseline
# Key and certificate tools: CURVE key pairs (--bus-security curve) and a
# self-signed certificate for trying TLS (docs/deployment.md).
COPY --from=build /out/bus-keygen /usr/local/bin/bus-keygen
COPY --from=build /out/gen-cert /usr/local/bin/gen-cert
COPY --from=build /out/sbctl /usr/local/bin/sbctl
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/switchboard-entrypoint
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/switchboard-healthcheck

WORKDIR /var/lib/switchboard
ENV SWITCHBOARD_DATA_DIR=/var/lib/switchboard/backend
USER 10001:10001

# Convention ports: terminator HTTP 8000, admin 8001; aggregator bus 8100,
# admin 8101; backend-svc bus 8200, admin 8201, events (PUB) 8202.
EXPOSE 8000 8001 8100 8101 8200 8201 8202

# The entrypoint binds the chosen binary's convention ports on every
# interface (the binaries' own defaults are 127.0.0.1, unreachable from
# outside a container) and then execs it, so the binary is PID 1 and gets
# SIGTERM from `docker stop` directly (each installs a handler and drains).
ENTRYPOINT ["/usr/local/bin/switchboard-entrypoint"]
CMD ["terminator"]

# Liveness: GET /healthz on the admin port of the process in this container
# (found from its --admin flag, its SWITCHBOARD_ADMIN or the convention
# port; see docker/healthcheck.sh). curl rather than bash's /dev/tcp: it
# speaks HTTP properly (status, timeouts, IPv6) for a few hundred kB.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/switchboard-healthcheck"]
