#!/usr/bin/env bash
# System packages the test suite needs beyond Python (Debian/Ubuntu):
#   git             a clone's state is checked (e.g. docs/curl.md leaves no files behind)
#   pythonX.Y-venv, libpythonX.Y
#                   Debian ships python3 without its venv module (install_dev.sh makes a
#                   venv) and without the shared libpython that the embedded Triton's
#                   python backend stub loads
#   docker-compose  tests/test_packaging.py renders docker-compose.yml with a real Compose
#                   implementation (`docker-compose config`; no Docker engine is needed)
#   curl            the same client the compose healthcheck uses
#   nginx, openssl  tests/test_proxy.py runs deploy/nginx's proxy for real, with a TLS
#                   certificate it makes; it starts its own nginx processes on loopback
#                   ports and does not use the system service
#                   (tests/test_web.py and `serve_local.py --web` run the page's proxy too)
#   chromium, chromium-driver
#                   tests/test_web.py opens the browser page in Debian's headless Chromium,
#                   driven through its chromedriver (Selenium); no browser is downloaded
# Idempotent and quiet: installs only what is missing, does nothing when everything is there.
# scripts/install_dev.sh runs it first.
#   bash scripts/ci_system_deps.sh
set -euo pipefail

have_compose() {
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1
}

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
if py=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=("python$py-venv")
    # Found the way the stub finds it: the interpreter's LIBDIR first, then the system's.
    libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
    LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" python3 -c \
        "import ctypes; ctypes.CDLL('libpython$py.so.1.0')" >/dev/null 2>&1 ||
        missing+=("libpython$py")
else
    missing+=(python3 python3-venv libpython3-dev) # the -dev package pulls libpython3.X
fi

have_compose || missing+=(docker-compose)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
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
