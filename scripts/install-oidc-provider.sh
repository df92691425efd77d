#!/usr/bin/env bash
# Installs the OpenID-certified authorization server that the private_key_jwt and mutual-TLS
# interop tests run on loopback: oidc-provider, pinned by interop/oidc-provider/package-lock.json.
# Does nothing if the pinned version is already there (pass --force to reinstall). Safe to run
# from several processes at once.
set -euo pipefail
exec bash "$(dirname "$0")/install-npm-harness.sh" oidc-provider oidc-provider "$@"
