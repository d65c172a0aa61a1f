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

filter=()
if [ -n "${MONGODB_SKIP_REASON:-}" ]; then
  filter=(-E 'not test(/mongo/)')
  skipped=$(cargo nextest list --workspace --locked -E 'test(/mongo/)' --message-format oneline 2>/dev/null | wc -l)
  echo "test: SKIPPING $skipped MongoDB test(s): $MONGODB_SKIP_REASON" >&2
  echo "test: set MONGODB_URI to a MongoDB 6+ server, or put the DocumentDB archives in ../shared/vendor/documentdb, to run them" >&2
fi

cargo nextest run --workspace --locked --no-fail-fast "${filter[@]}"
