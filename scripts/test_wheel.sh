#!/usr/bin/env bash
# Installs macko-spmv into a fresh virtual environment and runs the test suite
# against the installed package, from a copy of tests/ outside the source tree.
#
#   TORCH_INSTALL="torch==2.14.1 --index-url https://download.pytorch.org/whl/cu126" \
#     scripts/test_wheel.sh "dist/macko_spmv-...whl[test]"
#
# Arguments: what `pip install` gets for macko-spmv (a wheel with [test], or a
# requirement and index options). TORCH_INSTALL: pip arguments for torch,
# installed first (default torch from the configured index). PYTHON: the
# interpreter for the venv (default python3). WORK: a scratch folder (default
# a new temporary one).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "test_wheel: venv and tests in $work"

"${PYTHON:-python3}" -m venv "$work/venv"
py=$work/venv/bin/python
# shellcheck disable=SC2086  # TORCH_INSTALL is a list of pip arguments
"$py" -m pip install -q ${TORCH_INSTALL:-torch}
"$py" -m pip install -q "$@"
"$py" -m pip list 2>/dev/null | grep -i -E "^(torch|macko-spmv|nvidia-cuda-runtime) "

mkdir -p "$work/run"
cp -r "$repo/tests" "$repo/pyproject.toml" "$work/run/"
cd "$work/run"
"$py" - <<'EOF'
import importlib.metadata
import os
import sysconfig

import macko_spmv

site = os.path.realpath(sysconfig.get_paths()["purelib"])
where = os.path.realpath(macko_spmv.__file__)
print(f"macko_spmv {importlib.metadata.version('macko-spmv')} imported from {where}")
print("requires:", importlib.metadata.requires("macko-spmv"))
assert where.startswith(site + os.sep), f"macko_spmv must come from {site}, not {where}"
EOF
"$py" -m macko_spmv info
"$py" -m pytest -q -p no:cacheprovider
