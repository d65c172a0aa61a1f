#!/usr/bin/env bash
# Makes sure the real components the tests talk to are installed and running:
# PostgreSQL and Redis (Debian packages), a Kafka-protocol broker (tansu from crates.io,
# in-memory storage), a MongoDB-wire server (DocumentDB, scripts/documentdb.sh, unless
# MONGODB_URI names one), headless Chromium + chromedriver for the browser test (Debian) and,
# for the operator, a real kube-apiserver + etcd.
# Idempotent: anything already running is reused. Prints one line per component.
#
# Writes the variables the tests read to the file named by $1 (sourced by scripts/test.sh).
set -euo pipefail

ENV_OUT=${1:-/dev/stdout}
CACHE_DIR=${MESSENGER_CACHE_DIR:-$HOME/.cache/messenger}
TANSU_VERSION=0.6.0
KAFKA_PORT=${TEST_KAFKA_PORT:-9092}
mkdir -p "$CACHE_DIR"
# One run at a time: two at once (make test beside make bench, two clones) would install
# the same packages and build the same binaries over each other. `flock -o` keeps the lock
# in flock itself, so the servers started below do not inherit it and hold it forever.
if [ "${MESSENGER_TEST_DEPS_LOCKED:-}" != 1 ]; then
  MESSENGER_TEST_DEPS_LOCKED=1 exec flock -o "$CACHE_DIR/test-deps.lock" "$0" "$@"
fi

log() { echo "test-deps: $*" >&2; }

apt_updated=false
apt_install() {
  if [ "$apt_updated" = false ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    apt_updated=true
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >&2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port, seconds, what
  for _ in $(seq 1 $(( $2 * 5 ))); do port_open "$1" && return 0; sleep 0.2; done
  log "$3 did not start listening on 127.0.0.1:$1 within $2s"; return 1
}

# --- build prerequisites (C compiler and make for librdkafka; perl for its configure;
# OpenSSL headers for its TLS and SASL SCRAM, rdkafka's `ssl` feature) ---
missing=()
for tool in cc make perl pkg-config; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then apt_install build-essential perl pkg-config; fi
if ! pkg-config --exists openssl; then apt_install libssl-dev; fi

# --- PostgreSQL ---
if ! command -v pg_lsclusters >/dev/null; then apt_install postgresql; fi
pg_version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
if [ -z "$pg_version" ]; then
  pg_version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_createcluster "$pg_version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$pg_version" '$1==v && $2=="main" {print $4}' | grep -q online; then
  log "starting PostgreSQL $pg_version"
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start >&2
fi
wait_port 5432 30 PostgreSQL
# The tests connect over TCP as postgres/postgres; set the password (harmless under trust auth).
su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
# Parallel tests each hold a small pool; Debian's default of 100 connections is tight.
current_max=$(su postgres -c "psql -tAq -c 'SHOW max_connections'")
if [ "$current_max" -lt 300 ]; then
  log "raising PostgreSQL max_connections to 300"
  su postgres -c "psql -q -c 'ALTER SYSTEM SET max_connections = 300'" >/dev/null
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main restart >&2
  wait_port 5432 30 PostgreSQL
fi
log "PostgreSQL $pg_version up on 127.0.0.1:5432"

# --- Redis ---
if ! command -v redis-server >/dev/null; then apt_install redis-server redis-tools; fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/messenger-test.log >&2
  wait_port 6379 30 Redis
fi
log "Redis up on 127.0.0.1:6379"

# --- Kafka protocol: tansu ---
# Features: dynostore for the shared broker's memory:// storage (the default build refuses
# it); libsql for the sqlite:// storage of the private brokers that outage tests stop and
# restart (memory storage forgets its topics on restart). The stamp records what the
# installed binary was built with, so an older install is upgraded once.
TANSU_FEATURES=dynostore,libsql
tansu_stamp="$CACHE_DIR/tansu-$TANSU_VERSION-${TANSU_FEATURES/,/-}.installed"
TANSU_BIN=${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
if [ ! -x "$TANSU_BIN" ] || [ ! -f "$tansu_stamp" ] \
  || ! "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "installing tansu $TANSU_VERSION ($TANSU_FEATURES) from crates.io (first run only; several minutes)"
  # Its own target dir keeps the project's build cache apart.
  CARGO_TARGET_DIR="$HOME/.cache/tansu-build" cargo install --locked --force tansu \
    --version "$TANSU_VERSION" --features "$TANSU_FEATURES" >&2
  TANSU_BIN="$HOME/.cargo/bin/tansu"
  touch "$tansu_stamp"
fi
if ! port_open "$KAFKA_PORT"; then
  log "starting tansu on 127.0.0.1:$KAFKA_PORT"
  nohup "$TANSU_BIN" broker \
    --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    >"$CACHE_DIR/tansu.log" 2>&1 &
  wait_port "$KAFKA_PORT" 60 tansu
fi
log "Kafka-protocol broker (tansu) up on 127.0.0.1:$KAFKA_PORT"

# --- MongoDB wire protocol: the user's MONGODB_URI (a real MongoDB 6+) wins; otherwise
# DocumentDB, built once from ../shared/vendor/documentdb by scripts/documentdb.sh ---
mongo_uri=${TEST_MONGODB_URI:-${MONGODB_URI:-}}
mongo_env=$(mktemp)
trap 'rm -f "$mongo_env"' EXIT
if [ -n "$mongo_uri" ]; then
  hostport=$(echo "$mongo_uri" | sed -E 's#^mongodb(\+srv)?://([^@/]*@)?([^/,?]+).*#\3#')
  host=${hostport%:*}; port=${hostport##*:}; [ "$port" = "$hostport" ] && port=27017
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    log "MongoDB: using MONGODB_URI ($host:$port)"
    { echo "export TEST_MONGODB_URI='$mongo_uri'"; echo "export MONGODB_SKIP_REASON="; } >"$mongo_env"
  else
    echo "export MONGODB_SKIP_REASON='MONGODB_URI is set but its server is not reachable'" >"$mongo_env"
  fi
else
  "$(dirname "$0")/documentdb.sh" start "$mongo_env"
fi

# --- Chromium + chromedriver (Debian) for the web client's browser test ---
# An install failure does not stop the other components: the browser test is then reported
# as skipped with the reason (scripts/test.sh), and fails if run on its own.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  apt_install chromium chromium-driver || log "Chromium could not be installed"
fi
if command -v chromedriver >/dev/null && command -v chromium >/dev/null; then
  log "Chromium up: $(chromium --version 2>/dev/null | head -1), chromedriver $(command -v chromedriver)"
  browser_env="export CHROMEDRIVER=$(command -v chromedriver) CHROMIUM=$(command -v chromium) BROWSER_SKIP_REASON="
else
  browser_env="export BROWSER_SKIP_REASON='chromium or chromedriver is not installed (apt-get install chromium chromium-driver)'"
fi

# --- Prometheus (Debian) for the operator's PromQL canary analysis test ---
# The tests start their own server on a free port; the package's service is not used.
if ! command -v prometheus >/dev/null; then
  apt_install prometheus || log "Prometheus could not be installed"
fi
if command -v prometheus >/dev/null; then
  prometheus_env="export PROMETHEUS_BIN=$(command -v prometheus) PROMETHEUS_SKIP_REASON="
else
  prometheus_env="export PROMETHEUS_SKIP_REASON='prometheus is not installed (apt-get install prometheus)'"
fi

{
  echo "export TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres"
  echo "export TEST_REDIS_URL=redis://127.0.0.1:6379"
  echo "export TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
  echo "export TANSU_BIN=$TANSU_BIN"
  echo "$browser_env"
  echo "$prometheus_env"
  cat "$mongo_env"
} >"$ENV_OUT"
