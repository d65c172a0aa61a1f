#!/usr/bin/env bash
# A MongoDB-wire server for the tests: DocumentDB (PostgreSQL extensions + a Rust gateway
# speaking the MongoDB protocol), built from the archives in ../shared/vendor/documentdb/
# (see the README there for the facts this recipe rests on).
#
#   scripts/documentdb.sh start FILE  build once (cached), start, write `export` lines to FILE
#   scripts/documentdb.sh stop        stop the gateway and the cluster
#
# FILE gets TEST_MONGODB_URI plus TEST_DOCUMENTDB_GATEWAY / TEST_DOCUMENTDB_GATEWAY_CONFIG
# (the outage test runs a private gateway on the same cluster and kills it), or, when the
# archives are not there, MONGODB_SKIP_REASON. A failed build fails loudly.
#
# The build is cached under $MESSENGER_CACHE_DIR/documentdb (default ~/.cache/messenger):
# the extensions are compiled once and installed into the system PostgreSQL 15 (cheap to
# repeat), the gateway binary is kept per source commit. DocumentDB runs on its own
# PostgreSQL cluster (`15 documentdb`, port $MESSENGER_DOCUMENTDB_PG_PORT, default 5433);
# the cluster on 5432 is never touched.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENDOR=${MESSENGER_DOCUMENTDB_VENDOR:-$ROOT/../shared/vendor/documentdb}
CACHE_DIR=${MESSENGER_CACHE_DIR:-$HOME/.cache/messenger}/documentdb
PG_VERSION=15
CLUSTER=documentdb
PG_PORT=${MESSENGER_DOCUMENTDB_PG_PORT:-5433}
GATEWAY_PORT=${MESSENGER_DOCUMENTDB_PORT:-10260}
# The login the tests use; the server insists on SCRAM authentication.
DB_USER=messenger
DB_PASSWORD=messenger
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_CONFIG=$PG_BIN/pg_config

log() { echo "documentdb: $*" >&2; }
# Compiler output goes to a log; a failed step shows its end.
BUILD_LOG=$CACHE_DIR/build.log
quiet() {
  if ! "$@" >>"$BUILD_LOG" 2>&1; then
    tail -40 "$BUILD_LOG" >&2
    die "failed: $* (whole output in $BUILD_LOG)"
  fi
}
die() { log "$*"; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port, seconds, what
  for _ in $(seq 1 $(($2 * 5))); do port_open "$1" && return 0; sleep 0.2; done
  die "$3 did not start listening on 127.0.0.1:$1 within $2s"
}
psql_ddb() { su postgres -c "PGOPTIONS='-c client_min_messages=warning' $PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -p $PG_PORT -d postgres $*"; }

archive() { # glob -> the one archive that matches
  local found=("$VENDOR"/$1)
  [ -f "${found[0]}" ] || return 1
  echo "${found[0]}"
}

# --- sources ---------------------------------------------------------------------------
sources_present() {
  archive 'documentdb-*.tar.gz' >/dev/null && archive 'pgvector-*.tar.gz' >/dev/null \
    && archive 'pg_cron-*.tar.gz' >/dev/null
}

unpack() { # archive, directory: unpacked once, then reused (and so are its build outputs)
  if [ ! -f "$2/.unpacked" ]; then
    rm -rf "$2" && mkdir -p "$2"
    tar -xzf "$1" -C "$2"
    # pgvector and pg_cron archives have one top folder; DocumentDB's has none.
    local entries=("$2"/*)
    if [ ${#entries[@]} -eq 1 ] && [ -d "${entries[0]}" ]; then
      (shopt -s dotglob && mv "${entries[0]}"/* "$2"/ && rmdir "${entries[0]}")
    fi
    touch "$2/.unpacked"
  fi
}

# --- build -----------------------------------------------------------------------------
apt_packages=(postgresql-$PG_VERSION postgresql-server-dev-$PG_VERSION postgresql-contrib
  libbson-dev libpcre2-dev libintelrdfpmath-dev postgresql-$PG_VERSION-postgis-3
  postgresql-$PG_VERSION-rum libkrb5-dev pkg-config libssl-dev build-essential openssl)

install_packages() {
  local missing=()
  for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    quiet env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # Bookworm's pg_cron (1.4) is too old for DocumentDB and would shadow the one built here.
  if dpkg-query -W -f='${Status}' postgresql-$PG_VERSION-cron 2>/dev/null | grep -q "ok installed"; then
    log "removing postgresql-$PG_VERSION-cron (too old; pg_cron is built from the archive)"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 remove -y -qq postgresql-$PG_VERSION-cron
  fi
}

pkglib=$($PG_CONFIG --pkglibdir 2>/dev/null || echo /usr/lib/postgresql/$PG_VERSION/lib)

build_extensions() {
  local commit=$1 src=$CACHE_DIR/src-$commit
  local stamp=$CACHE_DIR/extensions-$commit.installed
  if [ -f "$stamp" ] && [ -f "$pkglib/pg_documentdb.so" ] && [ -f "$pkglib/pg_documentdb_core.so" ] \
    && [ -f "$pkglib/vector.so" ] && [ -f "$pkglib/pg_cron.so" ]; then
    return 0
  fi
  local started=$SECONDS
  log "building the PostgreSQL extensions (first run only; a few minutes)"
  # with_llvm=no: no clang bitcode, which halves the build and needs no clang.
  local make_vars=(PG_CONFIG=$PG_CONFIG with_llvm=no)
  unpack "$(archive 'pgvector-*.tar.gz')" "$CACHE_DIR/pgvector"
  unpack "$(archive 'pg_cron-*.tar.gz')" "$CACHE_DIR/pg_cron"
  unpack "$(archive 'documentdb-*.tar.gz')" "$src"
  for dir in "$CACHE_DIR/pgvector" "$CACHE_DIR/pg_cron"; do
    quiet make -C "$dir" -j"$(nproc)" "${make_vars[@]}"
    quiet make -C "$dir" "${make_vars[@]}" install
  done
  # Debian ships Intel's decimal math library without a pkg-config file.
  mkdir -p "$CACHE_DIR/pkgconfig"
  cat >"$CACHE_DIR/pkgconfig/intelmathlib.pc" <<'EOF'
Name: intelmathlib
Description: Intel decimal floating-point math library (Debian's libintelrdfpmath-dev)
Version: 2.0
Cflags: -I/usr/include
Libs: -lbidgcc000
EOF
  # Bookworm's libbson is 1.23; upstream pins 1.28, whose only addition used here is
  # BSON_SUBTYPE_SENSITIVE.
  local copt='-DBSON_SUBTYPE_SENSITIVE=0x08 -Wno-switch'
  local pkg_config_path=$CACHE_DIR/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  for dir in pg_documentdb_core pg_documentdb; do
    quiet env PKG_CONFIG_PATH="$pkg_config_path" \
      make -C "$src/$dir" -j"$(nproc)" "${make_vars[@]}" COPT="$copt"
    quiet env PKG_CONFIG_PATH="$pkg_config_path" \
      make -C "$src/$dir" "${make_vars[@]}" COPT="$copt" install
  done
  touch "$stamp"
  log "extensions built and installed in $((SECONDS - started))s"
}

build_gateway() {
  local commit=$1 src=$CACHE_DIR/src-$commit
  GATEWAY_BIN=$CACHE_DIR/bin/documentdb_gateway-$commit
  [ -x "$GATEWAY_BIN" ] && return 0
  local started=$SECONDS
  log "building the DocumentDB gateway (first run only; about 7 minutes on 2 cores)"
  unpack "$(archive 'documentdb-*.tar.gz')" "$src"
  # Its own target dir keeps the project's build cache apart.
  (cd "$src/pg_documentdb_gw" \
    && quiet env CARGO_TARGET_DIR="$CACHE_DIR/gateway-target" cargo build --release --locked)
  mkdir -p "$CACHE_DIR/bin"
  cp "$CACHE_DIR/gateway-target/release/documentdb_gateway" "$GATEWAY_BIN.tmp"
  mv "$GATEWAY_BIN.tmp" "$GATEWAY_BIN"
  log "gateway built in $((SECONDS - started))s"
}

# --- run -------------------------------------------------------------------------------
cluster_status() { pg_lsclusters -h | awk -v v=$PG_VERSION -v c=$CLUSTER '$1==v && $2==c {print $4}'; }

start_cluster() {
  if [ -z "$(cluster_status)" ]; then
    if port_open "$PG_PORT"; then
      die "port $PG_PORT is taken; set MESSENGER_DOCUMENTDB_PG_PORT to a free one"
    fi
    log "creating PostgreSQL cluster $PG_VERSION/$CLUSTER on port $PG_PORT"
    quiet pg_createcluster $PG_VERSION $CLUSTER -p "$PG_PORT" -- --auth=trust
    cat >/etc/postgresql/$PG_VERSION/$CLUSTER/conf.d/documentdb.conf <<'EOF'
# Written by the messenger project's scripts/documentdb.sh.
shared_preload_libraries = 'pg_cron, pg_documentdb_core, pg_documentdb'
cron.database_name = 'postgres'
documentdb.enableBackgroundWorker = 'true'
documentdb.enableBackgroundWorkerJobs = 'true'
# Every test opens its own client pool.
max_connections = 300
EOF
  fi
  if ! cluster_status | grep -q online; then
    log "starting PostgreSQL cluster $PG_VERSION/$CLUSTER on port $PG_PORT"
    pg_ctlcluster --skip-systemctl-redirect $PG_VERSION $CLUSTER start >&2
  fi
  wait_port "$PG_PORT" 30 "PostgreSQL cluster $CLUSTER"
  psql_ddb "-c 'CREATE EXTENSION IF NOT EXISTS documentdb CASCADE'" >&2
  psql_ddb >&2 <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD' CREATEROLE IN ROLE documentdb_admin_role;
  END IF;
END \$\$;
EOF
}

write_gateway_config() { # file, port
  cat >"$1" <<EOF
{
  "NodeHostName": "localhost",
  "BlockedRolePrefixes": ["documentdb", "citus", "pg", "internal_role"],
  "PostgresSystemUser": "postgres",
  "PostgresHostName": "127.0.0.1",
  "PostgresPort": $PG_PORT,
  "PostgresDatabase": "postgres",
  "GatewayListenPort": $2,
  "UseLocalHost": true,
  "EnforceSslTcp": false,
  "CertificateOptions": {
    "CertType": "pem_file",
    "FilePath": "$CACHE_DIR/gateway-cert.pem",
    "KeyFilePath": "$CACHE_DIR/gateway-key.pem"
  }
}
EOF
}

start_gateway() {
  # The release build will not start without a certificate, even with TLS off.
  if [ ! -f "$CACHE_DIR/gateway-key.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
      -keyout "$CACHE_DIR/gateway-key.pem" -out "$CACHE_DIR/gateway-cert.pem" 2>/dev/null
  fi
  GATEWAY_CONFIG=$CACHE_DIR/gateway.json
  write_gateway_config "$GATEWAY_CONFIG" "$GATEWAY_PORT"
  if ! port_open "$GATEWAY_PORT"; then
    log "starting the gateway on 127.0.0.1:$GATEWAY_PORT"
    nohup "$GATEWAY_BIN" "$GATEWAY_CONFIG" >"$CACHE_DIR/gateway.log" 2>&1 &
    echo $! >"$CACHE_DIR/gateway.pid"
    wait_port "$GATEWAY_PORT" 60 "DocumentDB gateway"
  fi
}

start() {
  local env_out=$1
  if ! sources_present; then
    log "no DocumentDB archives in $VENDOR"
    echo "export MONGODB_SKIP_REASON='no MONGODB_URI, and no DocumentDB sources in ../shared/vendor/documentdb to build a server from'" >"$env_out"
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  local name commit
  name=$(basename "$(archive 'documentdb-*.tar.gz')" .tar.gz)
  commit=${name#documentdb-}
  local started=$SECONDS
  install_packages
  build_extensions "$commit"
  build_gateway "$commit"
  start_cluster
  start_gateway
  log "DocumentDB up on 127.0.0.1:$GATEWAY_PORT (cluster $PG_VERSION/$CLUSTER on $PG_PORT; $((SECONDS - started))s)"
  {
    echo "export TEST_MONGODB_URI='mongodb://$DB_USER:$DB_PASSWORD@127.0.0.1:$GATEWAY_PORT/?authMechanism=SCRAM-SHA-256'"
    echo "export TEST_DOCUMENTDB_GATEWAY=$GATEWAY_BIN"
    echo "export TEST_DOCUMENTDB_GATEWAY_CONFIG=$GATEWAY_CONFIG"
    echo "export MONGODB_SKIP_REASON="
  } >"$env_out"
}

stop() {
  if [ -f "$CACHE_DIR/gateway.pid" ]; then
    kill "$(cat "$CACHE_DIR/gateway.pid")" 2>/dev/null || true
    rm -f "$CACHE_DIR/gateway.pid"
  fi
  if cluster_status | grep -q online; then
    pg_ctlcluster --skip-systemctl-redirect $PG_VERSION $CLUSTER stop >&2
  fi
}

# One run at a time (make test and make bench, or two clones, may start together): a second
# run waits here and then finds everything built and running. `flock -o`: the servers it
# starts must not inherit the lock.
mkdir -p "$CACHE_DIR"
if [ "${MESSENGER_DOCUMENTDB_LOCKED:-}" != 1 ]; then
  MESSENGER_DOCUMENTDB_LOCKED=1 exec flock -o "$CACHE_DIR/.lock" "$0" "$@"
fi

case "${1:-}" in
  start) start "${2:-/dev/stdout}" ;;
  stop) stop ;;
  *) echo "usage: $0 start [ENV_FILE] | stop" >&2; exit 2 ;;
esac
