#!/usr/bin/env bash
# Real Kubernetes API server for the operator's tests: kube-apiserver v1.20.2 built once from
# Debian's own `kubernetes` source package, plus Debian's etcd 3.4, both on loopback.
#
# Usage: scripts/kube-test-env.sh start|stop|status|build|env
#   build   install what is missing (apt; Debian's kubernetes-client when there is no kubectl),
#           fetch the source package, build kube-apiserver into the cache; nothing is started
#   start   build if needed, then make sure etcd + kube-apiserver run and are healthy, and
#           write the admin kubeconfig; reuses a healthy running server (idempotent)
#   stop    stop the etcd and kube-apiserver this script started (by their recorded pids)
#   status  exit 0 when the server answers /readyz with the admin token
#   env     print `export KUBECONFIG=...` / `export KUBECTL=...` lines for eval
#
# Everything lives outside the clone, under $MESSENGER_KUBE_CACHE (default
# /root/.cache/messenger-kube): the source tree, bin/kube-apiserver,
# run/ (etcd data, certificates, tokens, etcd.log, kube-apiserver.log, pids) and the
# kubeconfig (admin token in system:masters). The binary is a cache: it is built only when
# absent or built by an older recipe (4-9 minutes on 2 cores, depending on load). Each fresh
# start of etcd begins with an empty data dir.
#
# Tunables (environment): MESSENGER_KUBE_CACHE, MESSENGER_KUBE_API_PORT (default 16443),
# MESSENGER_KUBE_ETCD_PORT (default 23790; the peer port is this + 10),
# MESSENGER_KUBE_START_TIMEOUT (seconds to wait for health, default 120). scripts/kube-node.sh
# sources this file for a second, separate server and sets MESSENGER_KUBE_RUN_DIR,
# MESSENGER_KUBE_KUBECONFIG, MESSENGER_KUBE_SERVICE_CIDR and MESSENGER_KUBE_EXTRA_SANS (more
# subjectAltName entries for the serving certificate) as well.
set -euo pipefail

readonly K8S_VERSION="1.20.2"
readonly DEB_SOURCE_PACKAGE="kubernetes"
readonly DEB_SUITE="bookworm"
readonly CACHE="${MESSENGER_KUBE_CACHE:-/root/.cache/messenger-kube}"
readonly SRC_PARENT="$CACHE/src"
readonly BIN_DIR="$CACHE/bin"
readonly APISERVER_BIN="$BIN_DIR/kube-apiserver"
# Bumped whenever the build recipe changes, so a binary cached by an older recipe is rebuilt.
readonly BUILD_REVISION="2-reflect2-1.0.2"
readonly APISERVER_STAMP="$BIN_DIR/kube-apiserver.build-revision"
readonly RUN_DIR="${MESSENGER_KUBE_RUN_DIR:-$CACHE/run}"
readonly KUBECONFIG_PATH="${MESSENGER_KUBE_KUBECONFIG:-$CACHE/kubeconfig}"
readonly API_PORT="${MESSENGER_KUBE_API_PORT:-16443}"
readonly ETCD_PORT="${MESSENGER_KUBE_ETCD_PORT:-23790}"
readonly ETCD_PEER_PORT="$((ETCD_PORT + 10))"
readonly START_TIMEOUT="${MESSENGER_KUBE_START_TIMEOUT:-120}"
readonly APT_SOURCE_FILE="/etc/apt/sources.list.d/messenger-kube-deb-src.sources"
readonly APT_SOURCE_LIST_FILE="/etc/apt/sources.list.d/messenger-kube-deb-src.list"

log() { printf '[kube-test-env] %s\n' "$*" >&2; }
die() { printf '[kube-test-env] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Prerequisites (apt)
# ---------------------------------------------------------------------------------------------

apt_updated=0
apt_update_once() {
  if [[ $apt_updated -eq 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    apt_updated=1
  fi
}

# Installs the given Debian packages that are not installed yet.
install_missing_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "missing packages ${missing[*]}; run as root (apt-get install) or install them"
  apt_update_once
  log "apt-get install ${missing[*]}"
  # policy-rc.d is not touched: etcd-server's own service may start on 2379 if an init system
  # runs; we use our own ports and data dir, so it does not matter.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# True when apt already knows a source package index for the suite (some deb-src line exists).
have_deb_src_for_suite() {
  local configured
  configured=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  grep -qE '^[[:space:]]*(deb-src[[:space:]].*[[:space:]]'"$DEB_SUITE"'[[:space:]]|Types:.*deb-src)' <<<"$configured" || return 1
  # Captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail.
  local sources
  sources=$(apt-cache showsrc "$DEB_SOURCE_PACKAGE" 2>/dev/null || true)
  grep -q "^Package: $DEB_SOURCE_PACKAGE\$" <<<"$sources"
}

# Adds a deb-src entry for `bookworm main` derived from the machine's own `deb` entry, so no
# mirror host is named here: same URI, same keyring.
add_deb_src_entry() {
  if [[ -f $APT_SOURCE_FILE || -f $APT_SOURCE_LIST_FILE ]]; then
    return 0
  fi
  local f uri="" signed_by=""
  # deb822 files (.sources): take the first enabled paragraph of Types deb whose Suites
  # contain the suite and whose Components contain main.
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    read -r uri signed_by < <(awk -v suite="$DEB_SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && \
            (" " comps " ") ~ / main / && enabled != "no" && uri != "" && !done) {
          print uri, (signed == "" ? "-" : signed); done = 1
        }
        types = ""; suites = ""; comps = ""; uri = ""; signed = ""; enabled = ""
      }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, ""); val = $0 }
      key == "types" { types = val } key == "suites" { suites = val }
      key == "components" { comps = val } key == "uris" { split(val, u, " "); uri = u[1] }
      key == "signed-by" { signed = val } key == "enabled" { enabled = tolower(val) }
      END { flush() }' "$f") || true
    [[ -n $uri ]] && break
  done
  if [[ -n $uri ]]; then
    log "adding deb-src entry ($uri $DEB_SUITE main) to $APT_SOURCE_FILE"
    {
      echo "# Added by messenger scripts/kube-test-env.sh: the kubernetes source package."
      echo "Types: deb-src"
      echo "URIs: $uri"
      echo "Suites: $DEB_SUITE"
      echo "Components: main"
      [[ $signed_by != "-" && -n $signed_by ]] && echo "Signed-By: $signed_by"
    } >"$APT_SOURCE_FILE"
    return 0
  fi
  # One-line format (/etc/apt/sources.list, *.list): `deb [opts] URI bookworm main ...`.
  local line
  line=$(grep -hsE '^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+'"$DEB_SUITE"'[[:space:]].*\bmain\b' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 || true)
  [[ -n $line ]] || die "no apt 'deb' entry for '$DEB_SUITE main' found in /etc/apt/sources.list*; add a deb-src line for it by hand"
  line=$(sed -E 's/^[[:space:]]*deb[[:space:]]+/deb-src /; s/('"$DEB_SUITE"')[[:space:]].*$/\1 main/' <<<"$line")
  log "adding '$line' to $APT_SOURCE_LIST_FILE"
  printf '# Added by messenger scripts/kube-test-env.sh: the kubernetes source package.\n%s\n' "$line" >"$APT_SOURCE_LIST_FILE"
}

# Prints the path of the extracted source tree, fetching and extracting it when needed.
ensure_source_tree() {
  local tree
  tree=$(find "$SRC_PARENT" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' 2>/dev/null | head -n1 || true)
  if [[ -n $tree && -f $tree/Makefile && -d $tree/vendor ]]; then
    echo "$tree"; return 0
  fi
  mkdir -p "$SRC_PARENT"
  local orig
  orig=$(find "$SRC_PARENT" -maxdepth 1 -name "${DEB_SOURCE_PACKAGE}_*.orig.tar.*" | head -n1 || true)
  if [[ -z $orig ]]; then
    [[ $(id -u) -eq 0 ]] || die "fetching the source package needs root (apt)"
    if ! have_deb_src_for_suite; then
      add_deb_src_entry
      apt_updated=0
      apt_update_once
    fi
    log "apt-get source --download-only $DEB_SOURCE_PACKAGE"
    (cd "$SRC_PARENT" && apt-get source --download-only -qq "$DEB_SOURCE_PACKAGE" >&2)
    orig=$(find "$SRC_PARENT" -maxdepth 1 -name "${DEB_SOURCE_PACKAGE}_*.orig.tar.*" | head -n1 || true)
    [[ -n $orig ]] || die "apt-get source gave no ${DEB_SOURCE_PACKAGE}_*.orig.tar.* in $SRC_PARENT"
  fi
  log "extracting $(basename "$orig")"
  local staging="$SRC_PARENT/.extract.$$"
  rm -rf "$staging"; mkdir -p "$staging"
  tar -xf "$orig" -C "$staging"
  local top
  top=$(find "$staging" -mindepth 1 -maxdepth 1 -type d | head -n1)
  [[ -n $top && -f $top/Makefile ]] || die "unexpected layout in $orig"
  tree="$SRC_PARENT/kubernetes-$K8S_VERSION"
  rm -rf "$tree"
  mv "$top" "$tree"
  rm -rf "$staging"
  echo "$tree"
}

# Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, whose map iteration crashes
# under Go >= 1.18 (kube-apiserver dies with "unexpected fault address" in mapiterinit when
# it serialises, e.g., a CRD's OpenAPI). v1.0.2 is the upstream fix with the same API; Debian
# packages it, so the vendored copy is replaced with Debian's (GOPATH mode reads vendor/).
use_debian_reflect2() {
  local tree=$1 debian_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  install_missing_packages golang-github-modern-go-reflect2-dev
  [[ -f $debian_src/reflect2.go ]] || die "golang-github-modern-go-reflect2-dev has no $debian_src/reflect2.go"
  rsync -a --delete --exclude '*_test.go' "$debian_src/" "$tree/vendor/github.com/modern-go/reflect2/"
}

# Builds cmd/<what> for each name after the tree, in one `make` inside the tree (GOPATH layout
# the kubernetes 1.20 build expects, so one go build cache serves them all), and copies the
# binaries to $BIN_DIR. scripts/kube-node.sh builds the node's components through this too.
build_components() {
  local tree=$1 started what targets=()
  shift
  for what in "$@"; do targets+=("cmd/$what"); done
  started=$(date +%s)
  log "building $* from $tree (this takes minutes)"
  mkdir -p "$tree/.go/src/k8s.io"
  [[ -e $tree/.go/src/k8s.io/kubernetes ]] || ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
  use_debian_reflect2 "$tree"
  (
    cd "$tree/.go/src/k8s.io/kubernetes"
    # A tarball has no git metadata: give the version stamp explicitly.
    GOPATH="$tree/.go" CGO_ENABLED=0 GOFLAGS="" GO111MODULE=off \
      KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean \
      make WHAT="${targets[*]}" >&2
  )
  mkdir -p "$BIN_DIR"
  for what in "$@"; do
    install -m 0755 "$tree/_output/bin/$what" "$BIN_DIR/$what.tmp"
    mv "$BIN_DIR/$what.tmp" "$BIN_DIR/$what"
  done
  log "built $* into $BIN_DIR in $(($(date +%s) - started))s"
}

# kubectl: the machine's own when present (any version >= 1.20 talks to this server), else
# Debian's `kubernetes-client` (kubectl v1.20.2, built from the same source package).
installed_kubectl() {
  if [[ -n ${KUBECTL:-} && -x ${KUBECTL} ]]; then echo "$KUBECTL"; return 0; fi
  if command -v kubectl >/dev/null 2>&1; then command -v kubectl; return 0; fi
  return 1
}

cmd_build() {
  install_missing_packages golang-go etcd-server rsync curl openssl ca-certificates make tar gzip
  if ! installed_kubectl >/dev/null; then
    log "no kubectl on this machine: installing Debian's kubernetes-client (kubectl v$K8S_VERSION)"
    install_missing_packages kubernetes-client
  fi
  if [[ -x $APISERVER_BIN && $(cat "$APISERVER_STAMP" 2>/dev/null) == "$BUILD_REVISION" ]]; then
    log "cached: $APISERVER_BIN"
    return 0
  fi
  local tree
  tree=$(ensure_source_tree)
  build_components "$tree" kube-apiserver
  echo "$BUILD_REVISION" >"$APISERVER_STAMP"
}

# ---------------------------------------------------------------------------------------------
# Running etcd + kube-apiserver
# ---------------------------------------------------------------------------------------------

admin_token() { awk -F, '$2 == "admin" {print $1; exit}' "$RUN_DIR/tokens.csv"; }

api_healthy() {
  [[ -f $RUN_DIR/tokens.csv && -f $RUN_DIR/certs/ca.crt ]] || return 1
  local body
  body=$(curl -sS --max-time 3 --cacert "$RUN_DIR/certs/ca.crt" \
    -H "Authorization: Bearer $(admin_token)" "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null) || return 1
  [[ $body == "ok" ]]
}

etcd_healthy() {
  local body
  body=$(curl -sS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null) || return 1
  [[ $body == *'"health":"true"'* ]]
}

# True when the pid file names a live process that is ours: its command line mentions our run
# directory (both etcd and kube-apiserver get paths under it), so a recycled pid is never hit.
pid_alive() {
  [[ -f $1 ]] || return 1
  local pid cmdline
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$RUN_DIR"* ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stable credentials and certificates (kept across restarts so a kubeconfig stays valid).
ensure_credentials() {
  mkdir -p "$RUN_DIR/certs"
  chmod 700 "$RUN_DIR"
  local certs="$RUN_DIR/certs"
  if [[ ! -f $RUN_DIR/tokens.csv ]]; then
    local token
    token=$(openssl rand -hex 24)
    # token,user,uid,"groups": the admin is in system:masters, which RBAC lets do anything.
    printf '%s,admin,admin,"system:masters"\n' "$token" >"$RUN_DIR/tokens.csv"
    chmod 600 "$RUN_DIR/tokens.csv"
  fi
  if [[ ! -f $certs/sa.key ]]; then
    openssl genrsa -out "$certs/sa.key" 2048 2>/dev/null
    openssl rsa -in "$certs/sa.key" -pubout -out "$certs/sa.pub" 2>/dev/null
  fi
  if [[ ! -f $certs/apiserver.crt ]]; then
    # A CA plus a leaf serving certificate (with IP SANs): clients that reject a CA certificate
    # used as an end entity (rustls/webpki) accept this pair.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=messenger-kube-test-ca" \
      -keyout "$certs/ca.key" -out "$certs/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$certs/apiserver.key" -out "$certs/apiserver.csr" 2>/dev/null
    printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc${MESSENGER_KUBE_EXTRA_SANS:+,$MESSENGER_KUBE_EXTRA_SANS}" \
      >"$certs/apiserver.ext"
    openssl x509 -req -in "$certs/apiserver.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
      -CAcreateserial -days 3650 -extfile "$certs/apiserver.ext" -out "$certs/apiserver.crt" 2>/dev/null
    rm -f "$certs/apiserver.csr"
  fi
}

write_kubeconfig() {
  local ca_data tmp
  ca_data=$(base64 -w0 <"$RUN_DIR/certs/ca.crt")
  tmp="$KUBECONFIG_PATH.tmp.$$"
  umask 077
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: messenger-kube
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca_data
users:
- name: admin
  user:
    token: $(admin_token)
contexts:
- name: messenger-kube
  context:
    cluster: messenger-kube
    user: admin
    namespace: default
current-context: messenger-kube
EOF
  mv "$tmp" "$KUBECONFIG_PATH"
}

wait_until() {
  local what=$1 check=$2 pidfile=$3 logfile=$4 deadline=$((SECONDS + START_TIMEOUT))
  until $check; do
    if ! pid_alive "$pidfile"; then
      tail -n 30 "$logfile" >&2 || true
      die "$what exited during start-up (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logfile" >&2 || true
      die "$what not healthy after ${START_TIMEOUT}s (log: $logfile)"
    fi
    sleep 0.5
  done
}

start_etcd() {
  local etcd_bin
  etcd_bin=$(command -v etcd || true)
  [[ -n $etcd_bin ]] || die "etcd not found (package etcd-server)"
  if pid_alive "$RUN_DIR/etcd.pid" && etcd_healthy; then
    return 0
  fi
  port_in_use "$ETCD_PORT" && die "port $ETCD_PORT is taken by a process this script did not start; set MESSENGER_KUBE_ETCD_PORT"
  # Each fresh start is a fresh, empty cluster: no state leaks from an earlier run.
  rm -rf "$RUN_DIR/etcd-data"
  local arch
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  # etcd 3.4 refuses to start on architectures other than amd64 (and ppc64le) unless told.
  if [[ $arch != amd64 && $arch != ppc64el ]]; then export ETCD_UNSUPPORTED_ARCH="$arch"; fi
  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  setsid "$etcd_bin" \
    --name messenger-kube \
    --data-dir "$RUN_DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "messenger-kube=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --quota-backend-bytes 2147483648 \
    </dev/null >"$RUN_DIR/etcd.log" 2>&1 9>&- &
  echo $! >"$RUN_DIR/etcd.pid"
  wait_until etcd etcd_healthy "$RUN_DIR/etcd.pid" "$RUN_DIR/etcd.log"
}

# What scripts/kube-node.sh changes for its server: the authorizers (it adds Node) and
# extra flags.
APISERVER_AUTHORIZATION_MODE=RBAC
APISERVER_EXTRA_FLAGS=()

start_apiserver() {
  port_in_use "$API_PORT" && die "port $API_PORT is taken by a process this script did not start; set MESSENGER_KUBE_API_PORT"
  local certs="$RUN_DIR/certs"
  log "starting kube-apiserver v$K8S_VERSION on https://127.0.0.1:$API_PORT"
  setsid "$APISERVER_BIN" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "$API_PORT" \
    --insecure-port 0 \
    --cert-dir "$certs" \
    --tls-cert-file "$certs/apiserver.crt" \
    --tls-private-key-file "$certs/apiserver.key" \
    --token-auth-file "$RUN_DIR/tokens.csv" \
    --authorization-mode "$APISERVER_AUTHORIZATION_MODE" \
    --service-account-key-file "$certs/sa.pub" \
    --service-account-signing-key-file "$certs/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
    --api-audiences "https://kubernetes.default.svc.cluster.local" \
    --service-cluster-ip-range "${MESSENGER_KUBE_SERVICE_CIDR:-10.96.0.0/16}" \
    --endpoint-reconciler-type none \
    --allow-privileged=true \
    --logtostderr=true \
    --v=1 \
    "${APISERVER_EXTRA_FLAGS[@]}" \
    </dev/null >"$RUN_DIR/kube-apiserver.log" 2>&1 9>&- &
  echo $! >"$RUN_DIR/kube-apiserver.pid"
  wait_until kube-apiserver api_healthy "$RUN_DIR/kube-apiserver.pid" "$RUN_DIR/kube-apiserver.log"
}

cmd_start() {
  mkdir -p "$CACHE"
  if api_healthy && pid_alive "$RUN_DIR/kube-apiserver.pid"; then
    write_kubeconfig
    log "already running: https://127.0.0.1:$API_PORT (kubeconfig $KUBECONFIG_PATH)"
    return 0
  fi
  cmd_build
  ensure_credentials
  # A half-started pair (e.g. apiserver died): restart both so etcd state matches.
  if pid_alive "$RUN_DIR/kube-apiserver.pid"; then
    log "kube-apiserver process is up but unhealthy: restarting it"
    stop_pidfile "$RUN_DIR/kube-apiserver.pid" kube-apiserver
  fi
  start_etcd
  start_apiserver
  write_kubeconfig
  log "ready: https://127.0.0.1:$API_PORT, kubeconfig $KUBECONFIG_PATH"
}

stop_pidfile() {
  local pidfile=$1 name=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if pid_alive "$pidfile"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within 10s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

cmd_stop() {
  stop_pidfile "$RUN_DIR/kube-apiserver.pid" kube-apiserver
  stop_pidfile "$RUN_DIR/etcd.pid" etcd
}

cmd_status() {
  if api_healthy; then
    echo "running: https://127.0.0.1:$API_PORT (kubeconfig $KUBECONFIG_PATH)"
  else
    echo "not running"
    return 1
  fi
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  echo "export TEST_KUBECONFIG=$KUBECONFIG_PATH"
  local kubectl_path
  if kubectl_path=$(installed_kubectl); then echo "export KUBECTL=$kubectl_path"; fi
}

# Serialise concurrent invocations (parallel test processes may all call `start`).
with_lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/kube-test-env.lock"
  # Bounded: a first-time build takes minutes, nothing legitimate holds the lock longer.
  flock -w 1200 9 || die "another kube-test-env.sh holds $CACHE/kube-test-env.lock for 20 minutes"
  "$@"
}

# Only when run, not when sourced (scripts/kube-node.sh reuses the functions above).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case "${1:-}" in
    build) with_lock cmd_build ;;
    start) with_lock cmd_start ;;
    stop) with_lock cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
  esac
fi
