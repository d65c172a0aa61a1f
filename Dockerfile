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
# `builder` stage once and reuses it for every target (`make build` and `make k8s-images`
# do all of them). The runtime is debian-slim, non-root (uid 65532), with only the CA
# bundle and the shared libraries the binaries link (glibc, libgcc, zlib, and OpenSSL's libssl3
# for librdkafka's TLS and SASL SCRAM; every other TLS client and server is rustls);
# each image's HEALTHCHECK asks the component's /readyz.
#
# Build arguments:
#   RUST_IMAGE     the builder's image (default rust:1.95.0-bookworm)
#   RUNTIME_IMAGE  the runtime's base (default debian:bookworm-slim); a base that already
#                  has ca-certificates, libssl3 and zlib1g needs no network
#   BINARIES       `builder` (default): compile the workspace in the `builder` stage;
#                  `prebuilt`: take messenger-* from prebuilt/ in the build context instead
#                  (scripts/images.sh builds the test images so, from `make test`'s binaries)

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=builder

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# librdkafka (bundled, built by rdkafka-sys) needs a C/C++ toolchain, make, zlib and OpenSSL
# headers (libssl-dev), all in the rust image already; protoc is vendored by the proto crate.
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

# Binaries built elsewhere: `--build-arg BINARIES=prebuilt` with prebuilt/messenger-* in the
# context. Unused (and never built) by default.
FROM scratch AS prebuilt
COPY prebuilt/ /out/

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
# Installs only what the base lacks. messenger-healthcheck PORT: GET /readyz on the admin
# port (ADMIN_ADDR's, else PORT) with bash's /dev/tcp, as the image has no HTTP client.
RUN missing=""; \
    for package in ca-certificates libssl3 zlib1g; do \
      dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing="$missing $package"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 65532 messenger \
    && useradd -K UID_MAX=65532 --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin messenger \
    && printf '%s\n' '#!/bin/bash' \
      'port=${ADMIN_ADDR##*:}; port=${port:-$1}' \
      'exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1' \
      "printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3" \
      'read -r _ status _ <&3; [ "$status" = 200 ]' \
      >/usr/local/bin/messenger-healthcheck \
    && chmod 755 /usr/local/bin/messenger-healthcheck
USER 65532:65532
WORKDIR /
# JSON logs by default in containers; every component reads LOG_FORMAT.
ENV LOG_FORMAT=json

FROM runtime AS auth
COPY --from=binaries /out/messenger-auth /usr/local/bin/messenger-auth
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["messenger-healthcheck", "9001"]
EXPOSE 8001 9001
ENTRYPOINT ["/usr/local/bin/messenger-auth"]

FROM runtime AS chat
COPY --from=binaries /out/messenger-chat /usr/local/bin/messenger-chat
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["messenger-healthcheck", "9002"]
EXPOSE 8002 9002
ENTRYPOINT ["/usr/local/bin/messenger-chat"]

FROM runtime AS friends
COPY --from=binaries /out/messenger-friends /usr/local/bin/messenger-friends
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["messenger-healthcheck", "9003"]
EXPOSE 8003 9003
ENTRYPOINT ["/usr/local/bin/messenger-friends"]

FROM runtime AS users
COPY --from=binaries /out/messenger-users /usr/local/bin/messenger-users
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["messenger-healthcheck", "9004"]
EXPOSE 8004 9004
ENTRYPOINT ["/usr/local/bin/messenger-users"]

FROM runtime AS gateway
COPY --from=binaries /out/messenger-gateway /usr/local/bin/messenger-gateway
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["messenger-healthcheck", "9080"]
EXPOSE 8080 9080
ENTRYPOINT ["/usr/local/bin/messenger-gateway"]

FROM runtime AS operator
COPY --from=binaries /out/messenger-operator /usr/local/bin/messenger-operator
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["messenger-healthcheck", "9090"]
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/messenger-operator"]

# Generic target: `--target component --build-arg COMPONENT=<name>`; the binary is linked to
# a fixed path because ENTRYPOINT's exec form does not expand build arguments.
FROM runtime AS component
ARG COMPONENT=""
COPY --from=binaries /out/ /opt/messenger/bin/
USER 0:0
RUN test -n "${COMPONENT}" || { echo "build with --build-arg COMPONENT=auth|users|friends|chat|gateway|operator" >&2; exit 1; } \
    && test -x "/opt/messenger/bin/messenger-${COMPONENT}" || { echo "no binary messenger-${COMPONENT} in the workspace" >&2; exit 1; } \
    && ln -s "/opt/messenger/bin/messenger-${COMPONENT}" /usr/local/bin/messenger-component
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/messenger-component"]
