#!/usr/bin/env bash
# Installs the OAuth 2.0 server that the interop tests and examples/oauth2_client.rs run on
# loopback: oauth2-mock-server, pinned by interop/oauth2-server/package-lock.json. Does nothing
# if the pinned version is already there (pass --force to reinstall). Safe to run from several
# processes at once.
set -euo pipefail
exec bash "$(dirname "$0")/install-npm-harness.sh" oauth2-server oauth2-mock-server "$@"
