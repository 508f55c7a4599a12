#!/usr/bin/env bash
# Install sam2-triton with every extra into a virtual environment (no Pixi needed), after
# the system packages the tests use (scripts/ci_system_deps.sh: apt-get, when missing).
#   bash scripts/install_dev.sh [VENV_DIR] [CONSTRAINTS_FILE]
# Order matters: torch first, then Meta's `sam2` without build isolation (otherwise pip
# downloads a second multi-GB torch only to build it), then the project itself.
# CI pins versions with PIP_CONSTRAINT=.ci/constraints.txt (or the second argument).
set -euo pipefail
venv=${1:-.venv}
constraints=${2:-}
c=()
[ -n "$constraints" ] && c=(-c "$constraints")

# Without apt-get (or root/sudo) the packages are named and the Python part still installs:
# only the tests and the embedded Triton need them.
bash "$(dirname "$0")/ci_system_deps.sh" ||
    echo "install_dev.sh: going on without them; the tests need them" >&2
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "install_dev.sh: sam2-triton needs Python >= 3.10; python3 is $(python3 -V 2>&1)" >&2
    exit 1
}

# Some machines' pip configuration lists package folders that do not exist; pip then
# prints one "WARNING: Location ... is ignored" per package. Drop only those lines.
pip() { command pip "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2); }

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q --upgrade pip
# torchvision is needed by Meta's SAM2ImagePredictor (the reference in the tests).
pip install -q "${c[@]}" "torch>=2.5.1" "torchvision>=0.20.1"
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation --no-deps "sam2==1.1.0"
pip install -q "${c[@]}" -e ".[export,serve,bench,dev]"
