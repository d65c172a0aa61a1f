#!/bin/bash
# The official postgres image's contract, as far as docker-compose.yml uses it: a cluster
# in $PGDATA created on first start for POSTGRES_USER with POSTGRES_PASSWORD, reachable
# from other containers with a password.
set -euo pipefail
if [ "${1:-}" != postgres ]; then exec "$@"; fi
shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  echo "postgres-entrypoint: initdb $PGDATA" >&2
  initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
