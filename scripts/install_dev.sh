#!/usr/bin/env bash
# Install sam2-triton with every extra into a virtual environment (no Pixi needed).
#   bash scripts/install_dev.sh [VENV_DIR] [CONSTRAINTS_FILE]
# Order matters: torch first, then Meta's `sam2` without build isolation (otherwise pip
# downloads a second multi-GB torch only to build it), then the project itself.
set -euo pipefail
venv=${1:-.venv}
constraints=${2:-}
c=()
[ -n "$constraints" ] && c=(-c "$constraints")

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
