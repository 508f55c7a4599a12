#!/usr/bin/env bash
# System packages the test suite needs beyond Python (Debian/Ubuntu):
#   docker-compose  tests/test_packaging.py renders docker-compose.yml with a real Compose
#                   implementation (`docker-compose config`; no Docker engine is needed)
#   curl            the same client the compose healthcheck uses
#   nginx, openssl  tests/test_proxy.py runs deploy/nginx's proxy for real, with a TLS
#                   certificate it makes; it starts its own nginx processes on loopback
#                   ports and does not use the system service
# Idempotent and quiet: installs only what is missing, does nothing when everything is there.
#   bash scripts/ci_system_deps.sh
set -euo pipefail

have_compose() {
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1
}

missing=()
have_compose || missing+=(docker-compose)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci_system_deps.sh: no apt-get here; install ${missing[*]} by hand" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "ci_system_deps.sh: need root (or sudo) to install ${missing[*]}" >&2
        exit 1
    }
    sudo=(sudo)
fi
# --no-install-recommends: docker-compose recommends docker.io (the engine), which CI does
# not need. apt's output is shown only when something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"
} >"$log" 2>&1; then
    cat "$log" >&2
    echo "ci_system_deps.sh: could not install ${missing[*]}" >&2
    exit 1
fi
echo "ci_system_deps.sh: installed ${missing[*]}"
