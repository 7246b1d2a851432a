#!/usr/bin/env bash
# Debian packages the tests start for real: PostgreSQL (the production profile's Dagster storage) and Chromium
# (the UI test). Installs whichever is missing when run as root with apt-get, as CI is; anywhere else it says
# which tests will be skipped. Does nothing when both are there.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    echo "setup: installed ${missing[*]}"
else
    echo "setup: ${missing[*]} missing (installing needs root and apt-get): the tests that start them will be skipped"
fi
