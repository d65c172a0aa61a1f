#!/usr/bin/env bash
# Container images with podman, for `make test` (and anyone without Docker):
#
#   scripts/images.sh test FILE   install podman + docker-compose if missing, make the local
#                                 Debian base image, build the six component images from the
#                                 binaries `cargo build --workspace --bins` left in
#                                 $CARGO_TARGET_DIR/debug and the dependency stand-ins, start
#                                 podman's Docker-API socket for docker-compose, and write the
#                                 `export` lines the image and compose tests read to FILE
#   scripts/images.sh setup FILE  only the podman part (install, containers.conf, socket)
#   scripts/images.sh base        the podman part and the local Debian base image
#   scripts/images.sh stop        stop the Docker-API socket this script started
#
# No registry is reachable on CI machines, so the public base images the Dockerfile names by
# default (rust, debian:bookworm-slim) are replaced by a local one: `debootstrap --variant=
# minbase bookworm`, trimmed like debian-slim and imported into podman (about a minute, once:
# the tarball is cached under $MESSENGER_CACHE_DIR/images, keyed by the recipe below). The
# component images use the Dockerfile's `prebuilt` stage, so nothing is compiled inside a
# container; the binaries are copied with their debug info stripped, as a release build
# ships them. When podman cannot be made to work, FILE gets IMAGES_SKIP_REASON and
# scripts/test.sh reports the image tests as skipped with that reason.
#
# podman facts on these machines: runc (crun fails on this cgroup layout), cgroupfs, file
# events, default ulimits within the sandbox's hard limits; healthchecks need systemd timers,
# which these machines lack, so the compose test runs `podman healthcheck run` itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE_DIR=${MESSENGER_CACHE_DIR:-$HOME/.cache/messenger}
IMAGES_CACHE=$CACHE_DIR/images
PODMAN_DIR=$CACHE_DIR/podman
SOCKET=$PODMAN_DIR/docker-api.sock
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/messenger-target}
BIN_DIR=${MESSENGER_IMAGES_BIN_DIR:-$CARGO_TARGET_DIR/debug}
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${MESSENGER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bumped whenever the base recipe changes; the cached tarball and image are keyed by it.
BASE_REVISION=2
BASE_IMAGE=localhost/messenger-base/debian:$DEBIAN_SUITE-slim-r$BASE_REVISION
BASE_TARBALL=$IMAGES_CACHE/debian-$DEBIAN_SUITE-minbase-r$BASE_REVISION.tar
# What the runtime stage needs, installed into the base so its build needs no network.
BASE_PACKAGES=ca-certificates,libssl3,zlib1g
COMPONENTS=(auth users friends chat gateway operator)
REGISTRY=${MESSENGER_TEST_REGISTRY:-localhost/messenger}
# One tag per clone, so worktrees sharing this machine's podman storage do not overwrite
# each other's images.
TAG=${MESSENGER_TEST_IMAGE_TAG:-test-$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)}
STANDIN_PREFIX=localhost/messenger-standin

log() { echo "images: $*" >&2; }
die() { echo "images: ERROR: $*" >&2; exit 1; }

apt_updated=false
apt_install() {
  [ "$(id -u)" -eq 0 ] || return 1
  if [ "$apt_updated" = false ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=true
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Installs the Debian packages that are not installed yet; false when that is impossible.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" = "install ok installed" ] \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# containers.conf for this machine, named by CONTAINERS_CONF (nothing under /etc is touched).
write_containers_conf() {
  mkdir -p "$PODMAN_DIR"
  local nofile nproc conf=$PODMAN_DIR/containers.conf
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  cat >"$conf.new" <<EOF
# Written by scripts/images.sh for this machine's sandbox.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mv "$conf.new" "$conf"
  export CONTAINERS_CONF=$conf
}

socket_up() { podman --remote --url "unix://$SOCKET" version >/dev/null 2>&1; }

# podman's Docker-compatible API for docker-compose, started once and reused.
start_socket() {
  if socket_up; then log "Docker-API socket up at $SOCKET"; return; fi
  rm -f "$SOCKET"
  log "starting podman system service on $SOCKET"
  # fd 9 (the setup lock) closed: the service outlives this script. Started in /: it
  # outlives the clone it was started from too, and conmon cannot start containers from a
  # deleted working directory ("write child: broken pipe").
  (cd / && exec nohup podman system service --time=0 "unix://$SOCKET" \
    >"$PODMAN_DIR/service.log" 2>&1 9>&-) &
  echo $! >"$PODMAN_DIR/service.pid"
  for _ in $(seq 1 50); do socket_up && return; sleep 0.2; done
  tail -5 "$PODMAN_DIR/service.log" >&2
  return 1
}

# Installs and configures podman; on failure prints why and returns false.
setup_podman() {
  # dnsname lets compose containers find each other by service name; docker-compose is
  # Debian's 1.29, which drives podman's Docker API.
  if ! ensure_packages podman runc containernetworking-plugins \
    golang-github-containernetworking-plugin-dnsname docker-compose debootstrap binutils; then
    skip_reason="podman, docker-compose or debootstrap is missing and could not be installed (root and apt-get are needed)"
    return 1
  fi
  write_containers_conf
  if ! podman info >/dev/null 2>"$PODMAN_DIR/info.err"; then
    skip_reason="podman does not work here: $(tail -1 "$PODMAN_DIR/info.err")"
    return 1
  fi
  log "podman $(podman version --format '{{.Client.Version}}') with runc/cgroupfs ($CONTAINERS_CONF)"
  if ! start_socket; then
    skip_reason="podman system service did not start (see $PODMAN_DIR/service.log)"
    return 1
  fi
}

image_exists() { podman image exists "$1"; }

# The local stand-in for debian:bookworm-slim (and for the Rust image: nothing is compiled
# in a container here).
ensure_base_image() {
  if image_exists "$BASE_IMAGE"; then log "base image $BASE_IMAGE present"; return; fi
  mkdir -p "$IMAGES_CACHE"
  if [ ! -s "$BASE_TARBALL" ]; then
    local rootfs=$IMAGES_CACHE/rootfs.tmp
    rm -rf "$rootfs"
    log "debootstrap --variant=minbase $DEBIAN_SUITE (+ $BASE_PACKAGES; about a minute, once)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$rootfs" \
      "$DEBIAN_MIRROR" >"$IMAGES_CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$IMAGES_CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    # Trimmed as debian-slim is: no package caches, indexes, docs, manuals or translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
      "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    # Daemons installed into images must not try to start during the build.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TARBALL.tmp" .
    mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
    rm -rf "$rootfs"
  fi
  log "importing $BASE_IMAGE"
  podman import --quiet --change 'CMD ["bash"]' "$BASE_TARBALL" "$BASE_IMAGE" >/dev/null
}

# The six component images, from the Dockerfile's `prebuilt` stage.
build_component_images() {
  local context=$IMAGES_CACHE/context-$TAG c bin
  rm -rf "$context"
  mkdir -p "$context/prebuilt"
  for c in "${COMPONENTS[@]}"; do
    bin=$BIN_DIR/messenger-$c
    [ -x "$bin" ] || die "$bin is missing: run cargo build --workspace --bins first"
    # Without debug info, as a release build ships it (symbols stay, as in release).
    objcopy --strip-debug "$bin" "$context/prebuilt/messenger-$c"
  done
  # The image step of `make k8s-deploy-all`, with podman, the local base and these binaries.
  log "building ${COMPONENTS[*]} as $REGISTRY/messenger-<component>:$TAG (make k8s-images-build)"
  make -s -C "$ROOT" --no-print-directory k8s-images-build CONTAINER_TOOL=podman \
    IMAGE_REGISTRY="$REGISTRY" K8S_VERSION="$TAG" K8S_BUILD_CONTEXT="$context" \
    K8S_BUILD_ARGS="--pull=never --quiet --build-arg RUNTIME_IMAGE=$BASE_IMAGE --build-arg BINARIES=prebuilt" \
    >/dev/null
  rm -rf "$context"
}

# PostgreSQL and Redis from Debian's packages, Kafka as tansu: what docker-compose.yml runs
# in the test instead of the public images.
build_standin_images() {
  local context=$IMAGES_CACHE/standins-context-$TAG tansu=${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
  [ -x "$tansu" ] || die "tansu is missing ($tansu): run scripts/test-deps.sh first"
  rm -rf "$context"
  mkdir -p "$context"
  cp "$ROOT"/scripts/standins/* "$context/"
  cp "$tansu" "$context/tansu"
  strip "$context/tansu"
  for target in postgres redis kafka; do
    log "building $STANDIN_PREFIX/$target:$TAG"
    podman build --pull=never --format docker --quiet --build-arg BASE_IMAGE="$BASE_IMAGE" \
      --target "$target" -t "$STANDIN_PREFIX/$target:$TAG" "$context" >/dev/null
  done
  rm -rf "$context"
}

write_env() { # file
  {
    echo "export CONTAINERS_CONF='$CONTAINERS_CONF'"
    echo "export IMAGES_SKIP_REASON="
    echo "export TEST_IMAGE_REGISTRY='$REGISTRY'"
    echo "export TEST_IMAGE_TAG='$TAG'"
    echo "export TEST_DOCKER_HOST='unix://$SOCKET'"
    echo "export TEST_POSTGRES_IMAGE='$STANDIN_PREFIX/postgres:$TAG'"
    echo "export TEST_REDIS_IMAGE='$STANDIN_PREFIX/redis:$TAG'"
    echo "export TEST_KAFKA_IMAGE='$STANDIN_PREFIX/kafka:$TAG'"
  } >"$1"
}

skip_reason=""
command=${1:-}
case "$command" in
  setup | test)
    out=${2:?usage: scripts/images.sh $command FILE}
    # Other clones on this machine share the socket and the base image: one at a time here.
    mkdir -p "$IMAGES_CACHE"
    exec 9>"$IMAGES_CACHE/setup.lock"
    flock 9
    if ! setup_podman; then
      log "SKIPPING images: $skip_reason"
      echo "export IMAGES_SKIP_REASON='$skip_reason'" >"$out"
      exit 0
    fi
    if [ "$command" = test ]; then
      started=$(date +%s)
      ensure_base_image
      flock -u 9
      build_component_images
      build_standin_images
      # Earlier builds' layers that no tag uses any more (an hour old, so no build that is
      # still running loses its intermediate images).
      podman image prune --force --filter until=1h >/dev/null
      log "images built in $(( $(date +%s) - started ))s"
    fi
    write_env "$out"
    ;;
  base)
    mkdir -p "$IMAGES_CACHE"
    exec 9>"$IMAGES_CACHE/setup.lock"
    flock 9
    setup_podman || die "$skip_reason"
    ensure_base_image
    ;;
  stop)
    if [ -f "$PODMAN_DIR/service.pid" ] && kill "$(cat "$PODMAN_DIR/service.pid")" 2>/dev/null; then
      log "stopped the Docker-API socket"
    fi
    rm -f "$PODMAN_DIR/service.pid"
    ;;
  *)
    echo "usage: scripts/images.sh test FILE | setup FILE | stop" >&2
    exit 2
    ;;
esac
