#!/usr/bin/env bash
# The project's one test command (`make test`, and CI through .ci/run): starts or installs
# what the tests need, checks formatting and lints, then runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/messenger-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

env_file=$(mktemp)
trap 'rm -f "$env_file"' EXIT
scripts/test-deps.sh "$env_file"
# shellcheck disable=SC1090
source "$env_file"

if [ -x scripts/kube-test-env.sh ]; then
  scripts/kube-test-env.sh start
  export TEST_KUBECONFIG=${TEST_KUBECONFIG:-$HOME/.cache/messenger-kube/kubeconfig}
fi

if ! command -v cargo-nextest >/dev/null; then
  echo "test: installing cargo-nextest (first run only)" >&2
  cargo install --locked cargo-nextest
fi

echo "test: cargo fmt --check" >&2
cargo fmt --all --check
echo "test: sqlx query data (.sqlx/) matches the queries and migrations" >&2
scripts/sqlx-prepare.sh --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "test: doc tests" >&2
cargo test --workspace --doc --locked --quiet

# system-tests/tests/processes.rs runs the service binaries themselves: build them all.
echo "test: cargo build --bins" >&2
cargo build --workspace --bins --locked

# The six component images and the compose stack's stand-ins, from the binaries just built
# (system-tests/tests/images.rs runs them); podman and docker-compose are installed if missing.
echo "test: container images (scripts/images.sh)" >&2
images_env=$(mktemp)
trap 'rm -f "$env_file" "$images_env"' EXIT
scripts/images.sh test "$images_env"
# shellcheck disable=SC1090
source "$images_env"

# The OpenID Connect provider of the OAuth tests (npm, cached under ~/.cache/messenger).
echo "test: OpenID Connect provider (scripts/oidc-provider.sh)" >&2
if OIDC_PROVIDER_MODULES=$(scripts/oidc-provider.sh); then
  export OIDC_PROVIDER_MODULES
  OIDC_SKIP_REASON=
else
  OIDC_SKIP_REASON="scripts/oidc-provider.sh could not install oauth2-mock-server (see above)"
fi
# A real single-node Kubernetes (scripts/kube-node.sh) running those images, for
# system-tests/tests/kube_node.rs; stopped when this script ends (unless another user of
# the node on this machine is still running). Its second tag is the rollouts' new version.
KUBE_NODE_SKIP_REASON=
if [ -n "${IMAGES_SKIP_REASON:-}" ]; then
  KUBE_NODE_SKIP_REASON="no container images to run ($IMAGES_SKIP_REASON)"
elif [ -n "${MONGODB_SKIP_REASON:-}" ]; then
  # Both slots' chat pods must share one store, or a switch loses every chat.
  KUBE_NODE_SKIP_REASON="chat needs MongoDB across rollout slots ($MONGODB_SKIP_REASON)"
else
  echo "test: single-node Kubernetes (scripts/kube-node.sh)" >&2
  node_log=$(mktemp)
  trap 'rm -f "$env_file" "$images_env" "$node_log"; scripts/kube-node.sh stop --holder $$' EXIT
  if scripts/kube-node.sh start --holder $$ 2>"$node_log" \
    && scripts/kube-node.sh import-images "$TEST_IMAGE_REGISTRY" "$TEST_IMAGE_TAG" \
      "$TEST_IMAGE_TAG-next" 2>>"$node_log"; then
    cat "$node_log" >&2
    eval "$(scripts/kube-node.sh env)"
  else
    cat "$node_log" >&2
    KUBE_NODE_SKIP_REASON="the node did not start: $(grep -h 'ERROR' "$node_log" | tail -1 | sed 's/^.*ERROR: //')"
  fi
fi
export KUBE_NODE_SKIP_REASON

# Tests whose component is missing are counted and reported as skipped, never run to
# pass silently; everything else runs.
excluded=()
report_skip() { # filterset, what, reason, how to get it
  local count
  count=$(cargo nextest list --workspace --locked -E "$1" --message-format oneline 2>/dev/null | wc -l)
  echo "test: SKIPPING $count $2 test(s): $3" >&2
  echo "test: $4" >&2
  excluded+=("$1")
}
if [ -n "${MONGODB_SKIP_REASON:-}" ]; then
  report_skip 'test(/mongo/)' MongoDB "$MONGODB_SKIP_REASON" \
    "set MONGODB_URI to a MongoDB 6+ server, or put the DocumentDB archives in ../shared/vendor/documentdb, to run them"
fi
if [ -n "${BROWSER_SKIP_REASON:-}" ]; then
  report_skip 'binary_id(messenger-system-tests::browser)' browser "$BROWSER_SKIP_REASON" \
    "install Debian's chromium and chromium-driver to run them"
fi
if [ -n "${PROMETHEUS_SKIP_REASON:-}" ]; then
  report_skip 'binary_id(messenger-operator::cluster) and test(/prometheus/)' Prometheus "$PROMETHEUS_SKIP_REASON" \
    "install Debian's prometheus to run them"
fi
if [ -n "${IMAGES_SKIP_REASON:-}" ]; then
  report_skip 'binary_id(messenger-system-tests::images)' "container image and compose" \
    "$IMAGES_SKIP_REASON" "install Debian's podman and docker-compose to run them"
fi
if [ -n "${OIDC_SKIP_REASON:-}" ]; then
  report_skip 'binary_id(messenger-system-tests::oauth) or test(/oidc_provider/)' \
    "OpenID Connect provider" "$OIDC_SKIP_REASON" \
    "install Node.js 20.19+ and npm with access to the npm registry to run them"
fi
if [ -n "$KUBE_NODE_SKIP_REASON" ]; then
  report_skip 'binary_id(messenger-system-tests::kube_node)' "single-node Kubernetes" \
    "$KUBE_NODE_SKIP_REASON" \
    "run as root on a machine where scripts/kube-node.sh start works (logs: ~/.cache/messenger-kube/node/)"
fi
filter=()
if [ ${#excluded[@]} -gt 0 ]; then
  joined=$(printf ' or %s' "${excluded[@]}")
  filter=(-E "not (${joined# or })")
fi

cargo nextest run --workspace --locked --no-fail-fast "${filter[@]}"
