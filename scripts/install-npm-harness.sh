#!/usr/bin/env bash
# Installs the npm packages of one of the project's Node.js interop servers:
#   install-npm-harness.sh <directory under interop/> <the server's npm package>
# at the versions its package-lock.json pins. Does nothing if the pinned version of the package
# is already there (pass --force as a third argument to reinstall). Safe to run from several
# processes at once (a file lock in the directory). Called by install-oauth2-server.sh and
# install-oidc-provider.sh.
set -euo pipefail
harness="$1"
package="$2"
cd "$(dirname "$0")/../interop/$harness"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js and npm are needed: Node.js 20.19+, 22.12+ or 24 (https://nodejs.org, or \`npm install -g node@22\` where an older npm exists)" >&2
  exit 1
fi
# oauth2-mock-server 8.2 states ^20.19 || ^22.12 || ^24; oidc-provider 9 states none and runs
# there too (it warns below Node.js 22 LTS).
if ! node -e '
  const [a, b] = process.versions.node.split(".").map(Number);
  process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a === 24 ? 0 : 1);
'; then
  echo "Node.js $(node --version) does not run $package: 20.19+, 22.12+ or 24 is needed (\`npm install -g node@22\` installs one)" >&2
  exit 1
fi
exec 9>.install.lock
flock 9
installed=$(PACKAGE="$package" node -e 'try { console.log(require(`./node_modules/${process.env.PACKAGE}/package.json`).version) } catch { console.log("") }')
pinned=$(PACKAGE="$package" node -e 'console.log(require("./package-lock.json").packages[`node_modules/${process.env.PACKAGE}`].version)')
if [ "${3:-}" != "--force" ] && [ "$installed" = "$pinned" ]; then
  echo "$package $installed is installed"
  exit 0
fi
npm ci --no-audit --no-fund
