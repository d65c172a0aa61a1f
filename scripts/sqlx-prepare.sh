#!/usr/bin/env bash
# Regenerates .sqlx/ (the query data that sqlx::query!() checks SQL against at compile time)
# from a scratch database with every crate's migrations, the way the services apply them:
# messenger-common's first, then each service's, in one _sqlx_migrations table.
# `--check` fails instead when the committed data is stale.
# Needs PostgreSQL (`make test-deps` starts it) and installs sqlx-cli on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

SQLX_CLI_VERSION=0.8.6
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
SCRATCH_URL="${ADMIN_URL%/*}/messenger_sqlx_prepare"

# One run at a time: runs share the scratch database and the copy of the tree below.
mkdir -p "$HOME/.cache/messenger-sqlx-prepare"
exec 7>"$HOME/.cache/messenger-sqlx-prepare/lock"
flock 7

if ! cargo sqlx --version 2>/dev/null | grep -q "$SQLX_CLI_VERSION"; then
  echo "sqlx-prepare: installing sqlx-cli $SQLX_CLI_VERSION (first run only)" >&2
  CARGO_TARGET_DIR="$HOME/.cache/sqlx-cli-build" cargo install --locked sqlx-cli \
    --version "$SQLX_CLI_VERSION" --no-default-features --features postgres,rustls >&2
fi

cargo sqlx database drop -y --database-url "$SCRATCH_URL" >/dev/null
cargo sqlx database create --database-url "$SCRATCH_URL"
service_migrations=$(ls -d services/*/migrations | grep -v '^services/common/')
for source in services/common/migrations $service_migrations; do
  cargo sqlx migrate run --ignore-missing --source "$source" --database-url "$SCRATCH_URL" >/dev/null
done
# prepare forces a re-check of every crate that uses the macros by touching their sources,
# which would make the next build of this tree recompile them. --check only reads, so it
# runs on a copy (mtimes kept, so the copy's own target dir stays warm between runs).
work_dir=.
if [ "${1:-}" = --check ]; then
  work_dir="$HOME/.cache/messenger-sqlx-prepare/tree"
  rm -rf "$work_dir" && mkdir -p "$work_dir"
  tar --exclude=./.git --exclude=./target -cf - . | tar -C "$work_dir" -xf -
fi
(cd "$work_dir" && CARGO_TARGET_DIR="$HOME/.cache/messenger-sqlx-prepare/target" \
  cargo sqlx prepare --workspace --database-url "$SCRATCH_URL" "$@")
cargo sqlx database drop -y --database-url "$SCRATCH_URL" >/dev/null
