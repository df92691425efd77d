#!/usr/bin/env bash
# Installs the OpenID-certified authorization server that the private_key_jwt interop tests run on
# loopback: oidc-provider, pinned by interop/oidc-provider/package-lock.json. Does nothing
# if the pinned version is already there (pass --force to reinstall). Safe to run from several
# processes at once.
set -euo pipefail
cd "$(dirname "$0")/../interop/oidc-provider"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js and npm are needed: Node.js 20.19+, 22.12+ or 24 (https://nodejs.org, or \`npm install -g node@22\` where an older npm exists)" >&2
  exit 1
fi
# oidc-provider 9 states no engines; it runs on the Node.js the other interop server needs (it
# warns below Node.js 22 LTS).
if ! node -e '
  const [a, b] = process.versions.node.split(".").map(Number);
  process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a === 24 ? 0 : 1);
'; then
  echo "Node.js $(node --version) does not run oidc-provider 9: 20.19+, 22.12+ or 24 is needed (\`npm install -g node@22\` installs one)" >&2
  exit 1
fi
exec 9>.install.lock
flock 9
installed=$(node -e 'try { console.log(require("./node_modules/oidc-provider/package.json").version) } catch { console.log("") }')
pinned=$(node -e 'console.log(require("./package-lock.json").packages["node_modules/oidc-provider"].version)')
if [ "${1:-}" != "--force" ] && [ "$installed" = "$pinned" ]; then
  echo "oidc-provider $installed is installed"
  exit 0
fi
npm ci --no-audit --no-fund
