#!/usr/bin/env bash
# A real single-node Kubernetes for the end-to-end tests (system-tests/tests/kube_node.rs):
# etcd + kube-apiserver (as scripts/kube-test-env.sh runs them, but a separate server on its
# own ports and state, so the operator tests' server never gets a controller-manager or a
# kubelet), kube-controller-manager, kube-scheduler, kubelet and kube-proxy v1.20.2 from the
# same Debian source tree, containerd 1.6 + runc + CNI bridge from Debian, DNS by dnsmasq.
# Facts and flags: ../shared/notes/kube-node.md.
#
# Usage: scripts/kube-node.sh COMMAND
#   build                  install the packages, build the four node binaries (cached)
#   start [--holder PID]   build if needed, start everything, write the kubeconfig; reuses a
#                          healthy node. PID (e.g. scripts/test.sh's) is recorded as a user
#   stop [--holder PID]    without PID, or when PID was the last live user: stop everything
#                          and restore what the kubelet and kube-proxy changed on the machine
#   status                 exit 0 when the node is Ready
#   env                    `export` lines for the tests (kubeconfig, bridge address, script)
#   import-images REGISTRY TAG [TAG...]
#                          copy podman's REGISTRY/messenger-<component>:TAG images into the
#                          node's containerd; each further TAG names the same images again
#                          (a second version for rollouts)
#   dep stop|start NAME    take a dependency away from the pods or give it back (postgres,
#                          mongodb: their forwarders; redis, kafka: the node's own servers)
#
# Layout, under $MESSENGER_KUBE_CACHE (default ~/.cache/messenger-kube, shared with
# kube-test-env.sh): bin/ (the binaries, built once per recipe revision), node/images/
# (pause image), node/containerd/ (containerd's root: imported images survive restarts),
# node/run/ (everything else; wiped on each start and stop).
#
# The pods' network is the bridge $BRIDGE ($BRIDGE_IP/24), created here before anything
# starts, so the host's side of it is a stable address: the cluster DNS (dnsmasq, fed the
# Services' names every 2 s) and the dependencies listen there. PostgreSQL and DocumentDB,
# which scripts/test-deps.sh runs on 127.0.0.1 only, are forwarded by socat; Redis and the
# Kafka-protocol broker (tansu) are the node's own instances on the bridge address (so a
# test may stop them without disturbing other tests, and tansu advertises an address the
# pods can reach). Services with hand-written Endpoints in namespace messenger-deps name
# them: postgres:5432, mongodb:27017, redis:6379, kafka:9092.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODE_CACHE="${MESSENGER_KUBE_CACHE:-/root/.cache/messenger-kube}/node"
NODE_RUN="$NODE_CACHE/run"
export MESSENGER_KUBE_RUN_DIR="$NODE_RUN/control-plane"
export MESSENGER_KUBE_KUBECONFIG="$NODE_RUN/kubeconfig"
export MESSENGER_KUBE_API_PORT="${MESSENGER_KUBE_NODE_API_PORT:-16543}"
export MESSENGER_KUBE_ETCD_PORT="${MESSENGER_KUBE_NODE_ETCD_PORT:-23890}"
readonly BRIDGE=messenger0
readonly BRIDGE_IP=10.244.0.1
readonly POD_CIDR=10.244.0.0/24
export MESSENGER_KUBE_SERVICE_CIDR=10.97.0.0/16
export MESSENGER_KUBE_EXTRA_SANS="IP:10.97.0.1,IP:$BRIDGE_IP"
# shellcheck source=scripts/kube-test-env.sh
source "$ROOT/scripts/kube-test-env.sh"

log() { printf '[kube-node +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[kube-node] ERROR: %s\n' "$*" >&2; exit 1; }

readonly NODE_NAME=messenger-node
readonly NODE_BINARIES=(kube-controller-manager kube-scheduler kubelet kube-proxy)
# Bumped whenever the node binaries' build recipe changes (see kube-test-env.sh's).
readonly NODE_BUILD_REVISION="1-reflect2-1.0.2"
readonly NODE_STAMP="$BIN_DIR/kube-node.build-revision"
readonly IMAGES_DIR="$NODE_CACHE/images"
readonly PAUSE_IMAGE=localhost/messenger-kube/pause:3.2
readonly CONTAINERD_ROOT="$NODE_CACHE/containerd"
readonly CONTAINERD_SOCK="$NODE_RUN/containerd/containerd.sock"
readonly SYSCTLS_SAVED="$NODE_CACHE/sysctls.saved"
readonly HOLDERS="$NODE_CACHE/holders"
# What the kubelet and kube-proxy change, and what this script changes (forwarding).
readonly SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)
readonly DEPENDENCIES=(postgres mongodb redis kafka)
# pid files under $NODE_RUN are recognised by this marker in the command line.
PID_MARKER="$NODE_RUN"
readonly COMPONENTS=(auth users friends chat gateway operator)

ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
kubectl_() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# A pid file's process is ours when its command line or environment names $NODE_RUN
# (spawn sets MESSENGER_KUBE_NODE_RUN; this overrides kube-test-env.sh's check, which looks
# for that server's run directory).
pid_alive() {
  [[ -f $1 ]] || return 1
  local pid cmdline
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmdline=$(cat "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null | tr '\0' ' ') || return 1
  [[ $cmdline == *"$PID_MARKER"* ]]
}

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------

cmd_build_node() {
  cmd_build
  install_missing_packages containerd runc containernetworking-plugins dnsmasq-base iptables \
    conntrack socat redis-server gcc libc6-dev podman
  if [[ $(cat "$NODE_STAMP" 2>/dev/null) != "$NODE_BUILD_REVISION" ]] || ! all_node_binaries; then
    local tree
    tree=$(ensure_source_tree)
    build_components "$tree" "${NODE_BINARIES[@]}"
    echo "$NODE_BUILD_REVISION" >"$NODE_STAMP"
  else
    log "cached: ${NODE_BINARIES[*]} in $BIN_DIR"
  fi
  build_pause_image
}

all_node_binaries() {
  local b
  for b in "${NODE_BINARIES[@]}"; do [[ -x $BIN_DIR/$b ]] || return 1; done
}

# The pod sandbox image, from the same source tree: build/pause/linux/pause.c, static, alone
# in a FROM scratch image, saved as a docker archive for containerd.
build_pause_image() {
  local archive="$IMAGES_DIR/pause-3.2-r$NODE_BUILD_REVISION.tar"
  [[ -s $archive ]] && return 0
  local tree context="$IMAGES_DIR/pause-context"
  tree=$(ensure_source_tree)
  rm -rf "$context"; mkdir -p "$context"
  gcc -Os -static -DVERSION=v3.2-messenger -o "$context/pause" "$tree/build/pause/linux/pause.c"
  strip "$context/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$context/Containerfile"
  podman build --quiet --pull=never -t "$PAUSE_IMAGE" "$context" >/dev/null
  podman save --quiet --format docker-archive -o "$archive.tmp" "$PAUSE_IMAGE"
  mv "$archive.tmp" "$archive"
  rm -rf "$context"
  log "built $PAUSE_IMAGE ($archive)"
}

# ---------------------------------------------------------------------------------------------
# Machine state: sysctls, bridge, iptables, cgroups
# ---------------------------------------------------------------------------------------------

save_sysctls() {
  # Saved once: after a crash the file still holds the values from before the node ran.
  [[ -f $SYSCTLS_SAVED ]] && return 0
  local key
  for key in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$key" "$(sysctl -n "$key")"
  done >"$SYSCTLS_SAVED.tmp"
  mv "$SYSCTLS_SAVED.tmp" "$SYSCTLS_SAVED"
}

restore_sysctls() {
  [[ -f $SYSCTLS_SAVED ]] || return 0
  local line
  while IFS= read -r line; do
    sysctl -q -w "$line" >/dev/null || log "could not restore $line"
  done <"$SYSCTLS_SAVED"
  rm -f "$SYSCTLS_SAVED"
}

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_IP/" || ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# Removes every rule that jumps to a chain named PREFIX*, then those chains, in all tables.
remove_iptables_chains() {
  local prefix=$1 table rule chain
  for table in filter nat mangle; do
    # Captured first: grep finding nothing must not end the script (pipefail).
    local rules
    rules=$(iptables -t "$table" -S 2>/dev/null | grep -E "^-A [A-Z]+ .*-j $prefix" || true)
    while IFS= read -r rule; do
      [[ -n $rule ]] || continue
      # The rule is `iptables -S` output, quoted as iptables wrote it.
      eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
    done <<<"$rules"
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk -v p="^$prefix" '$1 == "-N" && $2 ~ p {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk -v p="^$prefix" '$1 == "-N" && $2 ~ p {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

# Deletes the cgroups the kubelet made (deepest first), in every v1 hierarchy.
remove_kubepods_cgroups() {
  local dir
  for dir in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $dir ]] || continue
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

# Starts a daemon in its own session, output to $NODE_RUN/NAME.log, pid to NAME.pid.
spawn() {
  local name=$1
  shift
  log "starting $name"
  MESSENGER_KUBE_NODE_RUN="$NODE_RUN" setsid "$@" </dev/null >"$NODE_RUN/$name.log" 2>&1 8>&- 9>&- &
  local pid=$! tries=0
  echo "$pid" >"$NODE_RUN/$name.pid"
  # Until the forked shell has exec'd the command, /proc shows this script's command line
  # and environment, and pid_alive would take a starting process for a dead one (a busy
  # machine widens that window): wait for the exec.
  while kill -0 "$pid" 2>/dev/null && ! pid_alive "$NODE_RUN/$name.pid" && ((tries++ < 100)); do
    sleep 0.05
  done
}

token_for() { awk -F, -v u="$1" '$2 == u {print $1}' "$RUN_DIR/tokens.csv"; }

# Component credentials: a token per identity, each in the group Kubernetes' default RBAC
# (and the Node authorizer) grants exactly that component's rights.
ensure_component_tokens() {
  local line user group
  for line in "system:node:$NODE_NAME,system:nodes" "system:kube-controller-manager," \
    "system:kube-scheduler," "system:kube-proxy,"; do
    user=${line%%,*}; group=${line#*,}
    [[ -n $(token_for "$user") ]] && continue
    printf '%s,%s,%s,"%s"\n' "$(openssl rand -hex 24)" "$user" "$user" "$group" >>"$RUN_DIR/tokens.csv"
  done
}

component_kubeconfig() { # file, user
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $RUN_DIR/certs/ca.crt
users:
- name: component
  user:
    token: $(token_for "$2")
contexts:
- name: node
  context: {cluster: node, user: component}
current-context: node
EOF
  chmod 600 "$1"
}

start_containerd() {
  mkdir -p "$CONTAINERD_ROOT" "$NODE_RUN/containerd" "$NODE_RUN/cni/net.d" "$NODE_RUN/cni/ipam"
  cat >"$NODE_RUN/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$NODE_RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  # The bridge already exists with its address; no masquerading (pods only talk to the node).
  cat >"$NODE_RUN/cni/net.d/10-messenger.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "messenger-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "subnet": "$POD_CIDR",
        "rangeStart": "10.244.0.10",
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_RUN/cni/ipam"
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  spawn containerd containerd --config "$NODE_RUN/containerd/config.toml"
  local deadline=$((SECONDS + 30))
  until ctr_ version >/dev/null 2>&1; do
    pid_alive "$NODE_RUN/containerd.pid" || { tail -20 "$NODE_RUN/containerd.log" >&2; die "containerd exited"; }
    ((SECONDS < deadline)) || die "containerd did not answer within 30s (log $NODE_RUN/containerd.log)"
    sleep 0.2
  done
  remove_leftover_containers
  import_archive "$IMAGES_DIR/pause-3.2-r$NODE_BUILD_REVISION.tar" "$PAUSE_IMAGE"
}

# Containers an earlier run left in containerd's metadata (its root survives restarts).
remove_leftover_containers() {
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
}

# Imports a docker archive unless containerd already holds IMAGE from that same archive.
import_archive() { # archive, image
  local stamp
  stamp="$CONTAINERD_ROOT/imported/$(printf '%s' "$2" | tr '/:' '__')"
  local id
  id=$(sha256sum "$1" | cut -c1-64)
  if [[ $(cat "$stamp" 2>/dev/null) == "$id" ]] && ctr_ images ls -q "name==$2" | grep -q .; then
    return 0
  fi
  ctr_ images import "$1" >/dev/null
  mkdir -p "${stamp%/*}"
  echo "$id" >"$stamp"
}

start_dns() {
  mkdir -p "$NODE_RUN/dns"
  : >"$NODE_RUN/dns/services"
  local upstream
  upstream=$(awk '$1 == "nameserver" {print $2; exit}' /etc/resolv.conf)
  # Cluster names come only from the hosts directory (NXDOMAIN otherwise); the rest is
  # forwarded to the machine's resolver.
  spawn dnsmasq dnsmasq --keep-in-foreground --user=root --no-resolv --no-hosts \
    ${upstream:+--server=$upstream} --listen-address="$BRIDGE_IP" --bind-interfaces \
    --hostsdir="$NODE_RUN/dns" --local=/cluster.local/ --domain-needed \
    --pid-file="$NODE_RUN/dnsmasq.own.pid" --log-facility="$NODE_RUN/dnsmasq.queries.log"
  spawn dns-sync "$0" dns-sync "$NODE_RUN"
}

# Every 2 s: the Services' ClusterIPs as hosts lines (name.ns.svc.cluster.local) for dnsmasq,
# which rereads the hosts directory when a file in it changes.
cmd_dns_sync() {
  local hosts="$NODE_RUN/dns/services" next
  next="$NODE_RUN/dns-services.next"
  while :; do
    if kubectl_ get services -A -o \
      jsonpath='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}' \
      2>/dev/null | awk '$1 ~ /^[0-9]/' >"$next"; then
      cmp -s "$next" "$hosts" || mv "$next" "$hosts"
    fi
    sleep 2
  done
}

start_dependencies() {
  local docdb_port=${MESSENGER_DOCUMENTDB_PORT:-10260}
  dep_start postgres
  dep_start mongodb
  dep_start redis
  dep_start kafka
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: messenger-deps}
$(for dep in postgres:5432 mongodb:27017 redis:6379 kafka:9092; do
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: messenger-deps}\nspec:\n  ports: [{name: tcp, port: %s, targetPort: %s}]\n' "${dep%:*}" "${dep#*:}" "${dep#*:}"
    printf -- '---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: %s, namespace: messenger-deps}\nsubsets: [{addresses: [{ip: %s}], ports: [{name: tcp, port: %s}]}]\n' "${dep%:*}" "$BRIDGE_IP" "${dep#*:}"
  done)
EOF
  log "dependencies on $BRIDGE_IP: postgres:5432 -> 127.0.0.1:5432, mongodb:27017 -> 127.0.0.1:$docdb_port, redis:6379, kafka:9092"
}

dep_start() {
  local name=$1
  pid_alive "$NODE_RUN/dep-$name.pid" && return 0
  case "$name" in
    postgres) spawn "dep-$name" socat "TCP-LISTEN:5432,bind=$BRIDGE_IP,fork,reuseaddr" TCP:127.0.0.1:5432 ;;
    mongodb)
      spawn "dep-$name" socat "TCP-LISTEN:27017,bind=$BRIDGE_IP,fork,reuseaddr" \
        "TCP:127.0.0.1:${MESSENGER_DOCUMENTDB_PORT:-10260}" ;;
    redis)
      mkdir -p "$NODE_RUN/redis"
      # Persisted (append-only file, synced per write), as a production Redis holding
      # sessions is: a stopped and restarted Redis comes back with what it had.
      spawn "dep-$name" redis-server --bind "$BRIDGE_IP" --port 6379 --save "" \
        --appendonly yes --appendfsync always \
        --dir "$NODE_RUN/redis" --protected-mode no \
        --proc-title-template "{title} {listen-addr} $NODE_RUN" ;;
    kafka)
      local tansu=${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
      [[ -x $tansu ]] || die "tansu is missing ($tansu): run scripts/test-deps.sh first"
      mkdir -p "$NODE_RUN/tansu"
      # SQLite storage: a stopped and restarted broker keeps its topics and messages.
      (cd "$NODE_RUN/tansu" && spawn "dep-$name" "$tansu" broker --storage-engine sqlite://tansu.db \
        --listener-url "tcp://$BRIDGE_IP:9092" --advertised-listener-url "tcp://$BRIDGE_IP:9092")
      ;;
    *) die "unknown dependency '$name' (one of ${DEPENDENCIES[*]})" ;;
  esac
  local port deadline=$((SECONDS + 30))
  case "$name" in postgres) port=5432 ;; mongodb) port=27017 ;; redis) port=6379 ;; kafka) port=9092 ;; esac
  until (exec 3<>"/dev/tcp/$BRIDGE_IP/$port") 2>/dev/null; do
    pid_alive "$NODE_RUN/dep-$name.pid" || { tail -5 "$NODE_RUN/dep-$name.log" >&2; die "$name exited"; }
    ((SECONDS < deadline)) || die "$name is not listening on $BRIDGE_IP:$port after 30s"
    sleep 0.2
  done
}

start_control_plane() {
  ensure_credentials
  ensure_component_tokens
  APISERVER_AUTHORIZATION_MODE=Node,RBAC
  APISERVER_EXTRA_FLAGS=(
    --enable-admission-plugins NodeRestriction
    --kubelet-preferred-address-types InternalIP
  )
  start_etcd
  start_apiserver
  write_kubeconfig
  local c
  for c in kube-controller-manager kube-scheduler kube-proxy kubelet; do
    component_kubeconfig "$NODE_RUN/$c.kubeconfig" "$(component_user "$c")"
  done
  spawn kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$NODE_RUN/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$NODE_RUN/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$NODE_RUN/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --port 0 --leader-elect=false \
    --use-service-account-credentials \
    --service-account-private-key-file "$RUN_DIR/certs/sa.key" \
    --root-ca-file "$RUN_DIR/certs/ca.crt" \
    --flex-volume-plugin-dir "$NODE_RUN/flexvolume" \
    --cert-dir "$NODE_RUN/controller-manager-certs" \
    --node-monitor-grace-period 20s --logtostderr --v=1
  spawn kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig "$NODE_RUN/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$NODE_RUN/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$NODE_RUN/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --port 0 --leader-elect=false \
    --cert-dir "$NODE_RUN/scheduler-certs" --logtostderr --v=1
}

component_user() {
  case "$1" in
    kubelet) echo "system:node:$NODE_NAME" ;;
    *) echo "system:$1" ;;
  esac
}

start_node_agents() {
  mkdir -p "$NODE_RUN/kubelet"
  spawn kubelet "$BIN_DIR/kubelet" \
    --kubeconfig "$NODE_RUN/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$BRIDGE_IP" --address "$BRIDGE_IP" \
    --root-dir "$NODE_RUN/kubelet" --cert-dir "$NODE_RUN/kubelet/pki" \
    --volume-plugin-dir "$NODE_RUN/kubelet/volume-plugins" \
    --container-runtime remote --container-runtime-endpoint "unix://$CONTAINERD_SOCK" \
    --cgroup-driver cgroupfs --fail-swap-on=false \
    --cluster-dns "$BRIDGE_IP" --cluster-domain cluster.local --resolv-conf /etc/resolv.conf \
    --eviction-hard= --image-gc-high-threshold 100 --read-only-port 0 \
    --healthz-bind-address 127.0.0.1 --healthz-port 10248 \
    --logtostderr --v=1
  spawn kube-proxy "$BIN_DIR/kube-proxy" \
    --kubeconfig "$NODE_RUN/kube-proxy.kubeconfig" \
    --hostname-override "$NODE_NAME" --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --oom-score-adj 0 \
    --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --logtostderr --v=1
}

node_ready() {
  [[ $(kubectl_ get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# Something a fresh start can build on: nothing left of an earlier run.
all_alive() {
  local p
  for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet \
    kube-proxy dnsmasq dns-sync; do
    case $p in etcd | kube-apiserver) pid_alive "$RUN_DIR/$p.pid" ;; *) pid_alive "$NODE_RUN/$p.pid" ;; esac || return 1
  done
}

cmd_start() {
  local holder=${1:-}
  mkdir -p "$NODE_CACHE"
  if all_alive && api_healthy && node_ready; then
    add_holder "$holder"
    log "already running (kubeconfig $KUBECONFIG_PATH)"
    return 0
  fi
  [[ $(id -u) -eq 0 ]] || die "the node needs root (kubelet, iptables, bridge)"
  # The build shares the source tree with kube-test-env.sh: its lock only for that.
  with_lock cmd_build_node
  flock -u 9
  # The node lock moves to fd 9, which every daemon started from here closes (fd 8 would be
  # inherited by etcd and kube-apiserver, and stay locked as long as they run).
  exec 9>&8 8>&-
  local started=$SECONDS
  teardown
  trap 'log "start failed: tearing down (logs kept in $NODE_CACHE/failed-start)"; keep_logs; teardown' EXIT
  mkdir -p "$NODE_RUN"
  save_sysctls
  sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
  ensure_bridge
  start_containerd
  start_control_plane
  start_dns
  start_node_agents
  wait_until "the node" node_ready "$NODE_RUN/kubelet.pid" "$NODE_RUN/kubelet.log"
  start_dependencies
  trap - EXIT
  add_holder "$holder"
  log "ready in $((SECONDS - started))s: node $NODE_NAME, kubeconfig $KUBECONFIG_PATH"
}

keep_logs() {
  rm -rf "$NODE_CACHE/failed-start"
  mkdir -p "$NODE_CACHE/failed-start"
  cp "$NODE_RUN"/*.log "$RUN_DIR"/*.log "$NODE_CACHE/failed-start/" 2>/dev/null || true
}

add_holder() {
  [[ -n $1 ]] || return 0
  echo "$1" >>"$HOLDERS"
}

# True when a recorded user other than $1 is still alive.
other_holders() {
  [[ -f $HOLDERS ]] || return 1
  local pid live=()
  while read -r pid; do
    [[ $pid != "$1" ]] && kill -0 "$pid" 2>/dev/null && live+=("$pid")
  done <"$HOLDERS"
  printf '%s\n' "${live[@]}" >"$HOLDERS"
  [[ ${#live[@]} -gt 0 ]]
}

cmd_stop() {
  local holder=${1:-}
  if [[ -n $holder ]] && other_holders "$holder"; then
    log "still used by pid(s) $(tr '\n' ' ' <"$HOLDERS"): left running"
    return 0
  fi
  rm -f "$HOLDERS"
  teardown
}

# SIGTERM to the processes of these pid files at once, then waits (10 s at most, then
# SIGKILL) until each is gone. A process that has exited counts as gone even before it is
# reaped (pid_alive reads its command line, which a zombie no longer has).
stop_pidfiles() {
  local f deadline=$((SECONDS + 10)) stopping=()
  for f in "$@"; do
    if pid_alive "$f"; then
      log "stopping $(basename "$f" .pid) (pid $(cat "$f"))"
      kill -TERM "$(cat "$f")" 2>/dev/null || true
      stopping+=("$f")
    else
      rm -f "$f"
    fi
  done
  for f in "${stopping[@]}"; do
    while pid_alive "$f" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_alive "$f"; then
      log "$(basename "$f" .pid) did not stop within 10s: SIGKILL"
      kill -KILL "$(cat "$f")" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

# Stops everything and undoes the node's changes to the machine. Idempotent; also cleans up
# after a run that died without stopping.
teardown() {
  local name
  stop_pidfiles "$NODE_RUN"/{dns-sync,kube-proxy,kubelet,kube-scheduler,kube-controller-manager,dnsmasq}.pid \
    "$NODE_RUN"/dep-*.pid
  # The pods: kill their processes, then drop their network namespaces.
  if [[ -S $CONTAINERD_SOCK ]] && pid_alive "$NODE_RUN/containerd.pid"; then
    local netns
    netns=$(for id in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ containers info "$id" 2>/dev/null | grep -o '"/var/run/netns/cni-[0-9a-f-]*"' | tr -d '"' || true
    done | sort -u)
    remove_leftover_containers
    for name in $netns; do
      umount "$name" 2>/dev/null || true
      rm -f "$name"
    done
  fi
  stop_pidfiles "$NODE_RUN/containerd.pid"
  log "removing the node's network, cgroups, mounts and logs"
  # Shims whose containerd is gone (they name its socket on their command line).
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  stop_pidfiles "$RUN_DIR/kube-apiserver.pid"
  stop_pidfiles "$RUN_DIR/etcd.pid"
  if [[ -x $BIN_DIR/kube-proxy ]] && command -v iptables >/dev/null; then
    "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
    remove_iptables_chains KUBE-
  fi
  ip link delete "$BRIDGE" 2>/dev/null || true
  remove_kubepods_cgroups
  # Mounts the kubelet and containerd made under the run directory (secret volumes, shm,
  # overlay roots), deepest first.
  local mounts
  mounts=$(findmnt -rn -o TARGET 2>/dev/null | grep -F -e "$NODE_RUN/" -e "$CONTAINERD_ROOT/" | sort -r || true)
  while IFS= read -r name; do
    [[ -n $name ]] && { umount -l "$name" 2>/dev/null || true; }
  done <<<"$mounts"
  rm -rf /var/log/pods /var/log/containers
  restore_sysctls
  rm -rf "$NODE_RUN"
  log "stopped"
}

cmd_import_images() {
  local registry=$1 tag=$2 extra c refs=() archive
  shift 2
  for c in "${COMPONENTS[@]}"; do refs+=("$registry/messenger-$c:$tag"); done
  archive="$NODE_CACHE/images/$tag.tar"
  mkdir -p "${archive%/*}"
  local started=$SECONDS
  podman save --quiet -m --format docker-archive -o "$archive" "${refs[@]}"
  ctr_ images import "$archive" >/dev/null
  rm -f "$archive"
  for extra in "$@"; do
    for c in "${COMPONENTS[@]}"; do
      ctr_ images tag --force "$registry/messenger-$c:$tag" "$registry/messenger-$c:$extra" >/dev/null
    done
  done
  log "imported ${#refs[@]} images ($registry/messenger-<component>:$tag${*:+, also as $*}) in $((SECONDS - started))s"
}

cmd_status() {
  if api_healthy && node_ready; then
    echo "running: node $NODE_NAME (kubeconfig $KUBECONFIG_PATH)"
  else
    echo "not running"
    return 1
  fi
}

cmd_env() {
  echo "export TEST_KUBE_NODE_KUBECONFIG=$KUBECONFIG_PATH"
  echo "export TEST_KUBE_NODE_BRIDGE_IP=$BRIDGE_IP"
  echo "export TEST_KUBE_NODE_SCRIPT=$ROOT/scripts/kube-node.sh"
}

# One node per machine (iptables and the bridge are global): one command at a time.
with_node_lock() {
  mkdir -p "$NODE_CACHE"
  exec 8>"$NODE_CACHE/kube-node.lock"
  flock -w 1800 8 || die "another kube-node.sh holds $NODE_CACHE/kube-node.lock for 30 minutes"
  "$@"
}

holder_arg() { [[ ${1:-} == --holder ]] && echo "${2:?--holder needs a pid}"; true; }

case "${1:-}" in
  build) with_lock cmd_build_node ;;
  start) h=$(holder_arg "${@:2}"); with_node_lock cmd_start "$h" ;;
  stop) h=$(holder_arg "${@:2}"); with_node_lock cmd_stop "$h" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  import-images) [[ $# -ge 3 ]] || die "usage: import-images REGISTRY TAG [TAG...]"; cmd_import_images "${@:2}" ;;
  dep)
    case "${2:-}" in
      stop) stop_pidfiles "$NODE_RUN/dep-${3:?name}.pid" ;;
      start) dep_start "${3:?name}" ;;
      *) die "usage: dep stop|start NAME" ;;
    esac
    ;;
  dns-sync) cmd_dns_sync ;;
  *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
esac
