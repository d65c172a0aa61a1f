#!/usr/bin/env bash
# The OpenID Connect provider the tests sign in with (scripts/oidc-provider/server.mjs on
# oauth2-mock-server from npm, every version pinned by package-lock.json). Installs it on
# first use into ~/.cache/messenger/oidc-provider/<hash of the lock file> and prints that
# node_modules directory; the tests start `node scripts/oidc-provider/server.mjs <it>`.
# Needs Node.js 20.19+ and npm (Debian: apt-get install nodejs npm); exits non-zero
# with the reason on stderr when it cannot install.
set -euo pipefail
cd "$(dirname "$0")/oidc-provider"

log() { echo "oidc-provider: $*" >&2; }

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    log "$tool is not installed (Node.js 20.19+ and npm are needed)"
    exit 1
  fi
done
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  log "Node.js $(node --version) is too old: oauth2-mock-server needs 20.19 or newer"
  exit 1
fi

cache=$HOME/.cache/messenger/oidc-provider
hash=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
dir=$cache/$hash
mkdir -p "$cache"
# One install at a time; a finished one is marked, so a half-done one is redone.
exec 8>"$cache/lock"
flock 8
if [ ! -f "$dir/.installed" ]; then
  log "installing oauth2-mock-server from the npm registry (first run only)"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp package.json package-lock.json "$dir/"
  if ! (cd "$dir" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >&2); then
    log "npm ci failed (is the npm registry reachable?)"
    rm -rf "$dir"
    exit 1
  fi
  touch "$dir/.installed"
fi
echo "$dir/node_modules"
