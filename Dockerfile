# syntax=docker/dockerfile:1.7
#
# One image per component, all from one cargo build of the workspace:
#
#   docker build --target auth     -t ghcr.io/messenger/messenger-auth:0.1.0 .
#   docker build --target users    -t ghcr.io/messenger/messenger-users:0.1.0 .
#   docker build --target friends  -t ghcr.io/messenger/messenger-friends:0.1.0 .
#   docker build --target chat     -t ghcr.io/messenger/messenger-chat:0.1.0 .
#   docker build --target gateway  -t ghcr.io/messenger/messenger-gateway:0.1.0 .
#   docker build --target operator -t ghcr.io/messenger/messenger-operator:0.1.0 .
#
# or, equivalently, `--target component --build-arg COMPONENT=auth`. BuildKit builds the
# `builder` stage once and reuses it for every target (`make k8s-images` does all six).
# The runtime is debian-slim, non-root (uid 65532), with only the CA bundle and the shared
# libraries the binaries link (glibc, libgcc, libstdc++, zlib, OpenSSL).

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# librdkafka (bundled, built by rdkafka-sys) needs a C/C++ toolchain, make and zlib headers,
# all in the rust image already; protoc is vendored by the proto crate.
COPY . .
# Release build of every binary in the workspace; the cache mounts keep the registry and the
# target dir between builds. Binaries are copied out because a cache mount is not part of the
# image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -name 'messenger*' -perm -u+x -exec cp {} /out/ \; \
    && ls -l /out

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 messenger \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin messenger
USER 65532:65532
WORKDIR /
# JSON logs by default in containers; every service reads LOG_FORMAT.
ENV LOG_FORMAT=json

FROM runtime AS auth
COPY --from=builder /out/messenger-auth /usr/local/bin/messenger-auth
EXPOSE 8001
ENTRYPOINT ["/usr/local/bin/messenger-auth"]

FROM runtime AS chat
COPY --from=builder /out/messenger-chat /usr/local/bin/messenger-chat
EXPOSE 8002
ENTRYPOINT ["/usr/local/bin/messenger-chat"]

FROM runtime AS friends
COPY --from=builder /out/messenger-friends /usr/local/bin/messenger-friends
EXPOSE 8003
ENTRYPOINT ["/usr/local/bin/messenger-friends"]

FROM runtime AS users
COPY --from=builder /out/messenger-users /usr/local/bin/messenger-users
EXPOSE 8004
ENTRYPOINT ["/usr/local/bin/messenger-users"]

FROM runtime AS gateway
COPY --from=builder /out/messenger-gateway /usr/local/bin/messenger-gateway
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/messenger-gateway"]

FROM runtime AS operator
COPY --from=builder /out/messenger-operator /usr/local/bin/messenger-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/messenger-operator"]

# Generic target: `--target component --build-arg COMPONENT=<name>`; the binary is linked to
# a fixed path because ENTRYPOINT's exec form does not expand build arguments.
FROM runtime AS component
ARG COMPONENT
COPY --from=builder /out/ /opt/messenger/bin/
USER 0:0
RUN test -n "${COMPONENT}" || { echo "build with --build-arg COMPONENT=auth|users|friends|chat|gateway|operator" >&2; exit 1; } \
    && test -x "/opt/messenger/bin/messenger-${COMPONENT}" || { echo "no binary messenger-${COMPONENT} in the workspace" >&2; exit 1; } \
    && ln -s "/opt/messenger/bin/messenger-${COMPONENT}" /usr/local/bin/messenger-component
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/messenger-component"]
