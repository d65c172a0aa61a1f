#!/usr/bin/env bash
# The operator's memory benchmark (docs/benchmarks.md, "Idle memory"): starts a fresh
# kube-apiserver + etcd of its own (scripts/kube-test-env.sh on other ports and another run
# directory, so the test server is left alone), runs `cargo bench --bench memory` against it
# (the release operator, idle, then with OPERATOR_MEMORY_APPS MessengerApps rolled out to
# their second slot), and stops the server again.
#
# Environment: OPERATOR_MEMORY_APPS (default 1000), OPERATOR_BIN (measure another build),
# MESSENGER_KUBE_API_PORT / MESSENGER_KUBE_ETCD_PORT (default 17443 / 24790),
# MESSENGER_KUBE_RUN_DIR, MESSENGER_KUBE_KUBECONFIG. Extra arguments go to cargo bench.
set -euo pipefail
cd "$(dirname "$0")/.."

state="${TMPDIR:-/tmp}/messenger-operator-memory"
export MESSENGER_KUBE_RUN_DIR="${MESSENGER_KUBE_RUN_DIR:-$state/run}"
export MESSENGER_KUBE_KUBECONFIG="${MESSENGER_KUBE_KUBECONFIG:-$state/kubeconfig}"
export MESSENGER_KUBE_API_PORT="${MESSENGER_KUBE_API_PORT:-17443}"
export MESSENGER_KUBE_ETCD_PORT="${MESSENGER_KUBE_ETCD_PORT:-24790}"

# The count needs an empty server: stop an earlier run's (its own pids only), start afresh.
scripts/kube-test-env.sh stop >/dev/null 2>&1 || true
scripts/kube-test-env.sh start
trap 'scripts/kube-test-env.sh stop' EXIT
OPERATOR_MEMORY_KUBECONFIG="$MESSENGER_KUBE_KUBECONFIG" \
  cargo bench --locked -p messenger-operator --bench memory "$@"
