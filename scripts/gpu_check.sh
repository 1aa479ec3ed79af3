#!/usr/bin/env bash
# On a GPU machine: build in place for the local GPU, run the whole test
# suite (GPU tests included), compute-sanitizer over the kernels, and the
# benchmarks. Logs go to $OUT (default ./gpu-check-out).
#
#   scripts/gpu_check.sh                    # build, tests, sanitizer
#   STAGES="build bench" BENCH_ARGS="--shapes 8192x8192" scripts/gpu_check.sh
#
# Stages: build, test (TESTS: pytest arguments, default the whole suite),
# sanitize (SANITIZE_TOOLS, default "memcheck racecheck initcheck"), demo,
# bench (BENCH_ARGS are passed to `python -m macko_spmv bench`: default the
# full sweep, one vector, flushed and back-to-back timings), batch
# (BATCH_ARGS: default the batch sweep 1-2048 on the Llama shapes at d=0.5
# and 0.1, fp16), routes (the batch sweep once per multiply route, ROUTES
# default "stream dense", ROUTE_ARGS), decompress
# (benchmarks/experiments/decompress_bandwidth.py, DECOMPRESS_ARGS),
# compress (benchmarks/compress.py, COMPRESS_ARGS), e2e (`python -m
# macko_spmv e2e`, E2E_ARGS: default dense, d=0.5 and 0.1, prompts
# 128/512/2048, decode batches 1 and 8, with the logits check and a
# profile), profile (Nsight Compute over benchmarks/profile_multiply.py,
# PROFILE_CASES, kernels matching the regex PROFILE_KERNELS, default
# multiply_kernel), source (Nsight Compute's per-instruction counts and
# stall samples, SASS, of the first kernel matching PROFILE_KERNELS in each
# case of SOURCE_CASES, as gzipped CSV), pipes (Nsight Compute's per-pipe
# counters of the streaming and tile kernels once per experiment variant,
# benchmarks/experiments/pipe_metrics.sh: STREAM_CASES, TILE_CASES), ablation
# (benchmarks/experiments/stream_ablation.py, ABLATION_ARGS); ab (right
# after build: AB_TREE, a second source tree, built and benchmarked against
# this one, `bench AB_ARGS` AB_ROUNDS times each, benchmarks/experiments/
# ab_builds.sh); switches (right after build: `bench SWITCH_ARGS` once
# per setting of SWITCHES, SWITCH_ROUNDS times, benchmarks/experiments/
# env_switches.sh). ROUTE
# (default auto) is passed to bench and batch as --route. Stages run in
# that order. Measured data lands in
# $OUT/results.tgz, refreshed after every stage so that a run cut short
# keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
STAGES=${STAGES:-build test sanitize}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
has() { [[ " $STAGES " == *" $1 "* ]]; }
# The device tool returns at most 8 files: everything measured goes into one
# archive, rewritten at the start of every stage and at the end.
archive() { if [ -d "$OUT/results" ]; then tar -czf "$OUT/results.tgz" -C "$OUT" results; fi; }
step() { archive; echo "=== $1: $(date -u +%H:%M:%S)"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  $PYTHON -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -2
  $PYTHON -c 'import sysconfig as s; print("LDSHARED:", s.get_config_var("LDSHARED")); print("CXX:", s.get_config_var("CXX"))'
  env | grep -E '^(LDFLAGS|CFLAGS|CXXFLAGS|CC|CXX)=' || true
} 2>&1 | tee "$OUT/env.txt"

if has build; then
  step build
  arch=$($PYTHON -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16} MACKO_BUILD_CUDA=1 \
    $PYTHON -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
  $PYTHON -m macko_spmv info | tee -a "$OUT/env.txt"
  # The extension must use the process's libstdc++, not a static copy.
  so=$(ls macko_spmv/_C*.so)
  echo "libstdc++ linked dynamically: $(ldd "$so" | grep -c 'libstdc++') ; ostream copies inside: $(nm -D -C "$so" | grep -c ' W std::ostream& std::ostream::_M_insert')" | tee -a "$OUT/env.txt"
fi

if has ab; then
  step ab
  # An A/B against another source tree (benchmarks/experiments/ab_builds.sh):
  # this build is A, AB_TREE (a folder of the working tree) is built as B,
  # then `bench AB_ARGS` runs with each in turn, AB_ROUNDS times.
  OUT="$OUT/results" AB_BUILD=b PYTHON=$PYTHON bash benchmarks/experiments/ab_builds.sh \
    $PYTHON -m macko_spmv bench ${AB_ARGS:-} --no-plot --out {out} 2>&1 | tee "$OUT/ab.log" | tail -20 || status=1
fi

if has switches; then
  step switches
  # The kernels' experiment switches in turn, with this one build.
  OUT="$OUT/results" PYTHON=$PYTHON bash benchmarks/experiments/env_switches.sh \
    $PYTHON -m macko_spmv bench ${SWITCH_ARGS:-} --no-plot --out {out} 2>&1 | tee "$OUT/switches.log" | tail -20 || status=1
fi

if has test; then
  step test
  $PYTHON -m pytest -q -ra ${TESTS:-tests} 2>&1 | tee "$OUT/tests.log" | tail -25 || status=1
fi

if has sanitize; then
  step sanitize
  # Without the caching allocator every tensor is its own allocation, so an
  # access past a tensor's end is outside any allocation and gets reported.
  # racecheck reports shared-memory hazards inside cuBLAS's split-K nvjet
  # kernels (the dense route's GEMMs) even for a plain torch.mm with no
  # macko_spmv kernel in the process (H200, CUDA 13.0; benchmarks/NOTES.md,
  # v13k). Excluding them (--kernel-name-exclude kns=nvjet) made the run
  # fail with an internal sanitizer error, so they are counted apart: the
  # check fails on a hazard anywhere else or a run that did not finish.
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck}; do
    log="$OUT/sanitize-$tool.log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool $tool --error-exitcode 9 \
      $PYTHON scripts/sanitize_ops.py >"$log" 2>&1
    code=$?
    finished=$(grep -c "sanitize_ops: all kernels ran" "$log")
    if [ "$tool" = racecheck ]; then
      ours=$(grep "Race reported" "$log" | grep -vc nvjet)
      echo "racecheck: $(grep 'RACECHECK SUMMARY' "$log" | tail -1); reports outside cuBLAS's nvjet kernels: $ours; finished: $finished"
      if [ "$ours" != 0 ] || [ "$finished" != 1 ]; then status=1; fi
    else
      echo "$tool: $(grep 'ERROR SUMMARY' "$log" | tail -1); finished: $finished"
      if [ "$code" != 0 ] || [ "$finished" != 1 ]; then status=1; fi
    fi
  done
fi

if has demo; then
  step demo
  $PYTHON -m macko_spmv demo 2>&1 | tee "$OUT/demo.log" || status=1
fi

if has bench; then
  step bench
  $PYTHON -m macko_spmv bench --out "$OUT/results/spmv" --route "${ROUTE:-auto}" ${BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/bench.log" | grep -v "it/s\|case/s" | tail -80 || status=1
fi

if has batch; then
  step batch
  $PYTHON -m macko_spmv bench --out "$OUT/results/batch" --route "${ROUTE:-auto}" ${BATCH_ARGS:---shapes \
    4096x4096,11008x4096,4096x11008,8192x8192,28672x8192 --densities 0.5,0.1 --dtypes float16 --repeats 50 \
    --batch 1,2,4,8,16,32,64,128,512,2048} 2>&1 | tee "$OUT/batch.log" | grep -v "it/s\|case/s" | tail -80 || status=1
fi

if has routes; then
  step routes
  for route in ${ROUTES:-stream dense}; do
    $PYTHON -m macko_spmv bench --route "$route" --out "$OUT/results/route-$route" --no-plot \
      ${ROUTE_ARGS:---shapes 4096x4096,8192x8192 --densities 0.5,0.1 --batch 1,2,4,8,16,32,64,128,512,2048 --repeats 50} \
      2>&1 | tee "$OUT/routes-$route.log" | grep -v "it/s\|case/s" | tail -45 || status=1
  done
fi

if has decompress; then
  step decompress
  mkdir -p "$OUT/results"
  $PYTHON benchmarks/experiments/decompress_bandwidth.py ${DECOMPRESS_ARGS:-} 2>&1 | tee "$OUT/results/decompress.csv" || status=1
fi

if has compress; then
  step compress
  $PYTHON benchmarks/compress.py --out "$OUT/results/compress-gpu" ${COMPRESS_ARGS:-} 2>&1 | tee "$OUT/compress.log" | tail -30 || status=1
fi

if has e2e; then
  step e2e
  $PYTHON -m macko_spmv e2e --out "$OUT/results/e2e" --no-progress ${E2E_ARGS:---check --profile} 2>&1 \
    | tee "$OUT/e2e.log" | tail -40 || status=1
fi

if has profile; then
  step profile
  mkdir -p "$OUT/results"
  stalls=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' long_scoreboard short_scoreboard \
    mio_throttle lg_throttle wait barrier membar math_pipe_throttle not_selected selected no_instruction \
    dispatch_stall branch_resolving drain tex_throttle)
  ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
    --section LaunchStats --section MemoryWorkloadAnalysis --section InstructionStats --metrics "${stalls%,}" \
    -k "regex:${PROFILE_KERNELS:-multiply_kernel}" $PYTHON benchmarks/profile_multiply.py ${PROFILE_CASES:-8192x8192:0.5 8192x8192:0.1} \
    >"$OUT/results/profile.txt" 2>&1 || status=1
  grep -E "_kernel|Duration|DRAM Throughput|Compute \(SM\)|Warp Cycles Per Issued|Achieved Occupancy|Issued Instructions  |issue_stalled" \
    "$OUT/results/profile.txt" | sed -e 's/smsp__average_warps_issue_stalled_/stall /' -e 's/_per_issue_active.ratio//' | head -80
fi

if has source; then
  # One report and one CSV of its source page (SASS) per case.
  step source
  mkdir -p "$OUT/results/source"
  for case in ${SOURCE_CASES:-8192x8192:0.5}; do
    name=$(echo "$case" | tr ':' '_')
    ncu --clock-control none --section SourceCounters --section WarpStateStats --section SpeedOfLight \
      --import-source yes -k "regex:${PROFILE_KERNELS:-multiply_kernel}" -c 1 -f -o "$OUT/source-$name" \
      $PYTHON benchmarks/profile_multiply.py "$case" >"$OUT/results/source/$name.log" 2>&1 || status=1
    ncu -i "$OUT/source-$name.ncu-rep" --page source --csv --print-source sass \
      2>&1 | gzip >"$OUT/results/source/$name.sass.csv.gz" || status=1
  done
  ls -la "$OUT/results/source"
fi

if has pipes; then
  step pipes
  mkdir -p "$OUT/results"
  OUT="$OUT/results" PYTHON=$PYTHON bash benchmarks/experiments/pipe_metrics.sh 2>&1 | tee "$OUT/pipes.log" | tail -20 \
    || status=1
fi

if has ablation; then
  step ablation
  mkdir -p "$OUT/results"
  $PYTHON benchmarks/experiments/stream_ablation.py --out "$OUT/results/stream-ablation.csv" ${ABLATION_ARGS:-} 2>&1 \
    | tee "$OUT/ablation.log" | tail -40 || status=1
fi

step done
if [ -d "$OUT/results" ]; then rm -r "$OUT/results"; fi
exit $status
