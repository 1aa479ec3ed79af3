#!/usr/bin/env bash
# The CPU ops under AddressSanitizer; .ci/run calls it. Builds the CPU-only
# extension with -fsanitize=address in a scratch copy of the tree (the
# checkout's own build stays as it is), then, with the ASan runtime
# preloaded into Python (Python itself is not built with ASan):
#   1. scripts/fuzz_cpu_ops.py for FUZZ_SECONDS: random matrices through
#      compress, decompress and multiply, and corrupted arrays that bypass
#      validation through the raw ops;
#   2. the tests of bad and corrupted input and of the format
#      (tests/test_errors.py, tests/test_format.py) on the CPU.
# Any read or write outside an array aborts with ASan's report and a
# non-zero exit. About 3 minutes on 2 cores (the build takes most of it).
#
# Environment: PYTHON (default python) with torch, setuptools and ninja;
# FUZZ_SECONDS (default 60); MAX_JOBS (default 2); WORK (scratch folder;
# default a new temporary one, removed at the end unless KEEP_WORK=1).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PY=$(command -v "${PYTHON:-python}")
export MAX_JOBS=${MAX_JOBS:-2}
work=${WORK:-$(mktemp -d /tmp/macko-asan.XXXXXX)}
mkdir -p "$work"
if [ -z "${KEEP_WORK:-}" ] && [ -z "${WORK:-}" ]; then
  trap 'rm -rf "$work"' EXIT
fi
started=$SECONDS
step() { echo; echo "=== asan_check: $1 (+$((SECONDS - started)) s)"; }

step "scratch copy of the tree in $work/src"
src=$work/src
scripts/clean_copy.sh "$src"

step "CPU-only build with -fsanitize=address"
# setuptools adds CFLAGS to every compile and LDFLAGS to the link.
(cd "$src" && CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address" \
  MACKO_BUILD_CUDA=0 MACKO_DEV_OPS=1 "$PY" setup.py build_ext --inplace) > "$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; echo "asan_check: FAILED: build"; exit 1; }
libasan=$(${CXX:-c++} -print-file-name=libasan.so)
libstdcxx=$(${CXX:-c++} -print-file-name=libstdc++.so)
[ -f "$libasan" ] || { echo "asan_check: FAILED: no libasan.so for ${CXX:-c++}"; exit 1; }
so=$(ls "$src"/macko_spmv/_C*.so)
nm -D "$so" > "$work/symbols"
grep -q " __asan_report_" "$work/symbols" || { echo "asan_check: FAILED: $so is not instrumented"; exit 1; }
echo "instrumented: $(basename "$so"); runtime $libasan"

# Leaks are Python's and torch's, not the ops': not reported. Errors abort.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
# The ASan runtime first; libstdc++ right after it, so that ASan finds the
# C++ runtime's __cxa_throw when it starts (python itself does not link it)
# and the ops' exceptions (ValueError from a check) can be thrown.
run() { (cd "$src" && LD_PRELOAD="$libasan $libstdcxx" PYTHONPATH=$src "$PY" "$@"); }

step "fuzz for ${FUZZ_SECONDS:-60} s"
run scripts/fuzz_cpu_ops.py --seconds "${FUZZ_SECONDS:-60}"

step "tests of bad input and of the format, CPU"
run -m pytest -q -p no:cacheprovider tests/test_errors.py tests/test_format.py -k "not cuda"

echo
echo "asan_check: OK in $((SECONDS - started)) s"
