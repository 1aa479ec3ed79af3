#!/usr/bin/env bash
# An A/B of two source trees in one GPU session, so that a kernel change is
# timed against the code before it on the same machine, in the same hour:
# tree A is this checkout, tree B a copy of another commit (for example
# `git archive <branch> | tar -x -C ab-tree`, an untracked folder that the
# device tool carries; delete it before committing). Both are built in place
# at once (build_ext --inplace, half the cores each), then the command runs
# with each tree first on PYTHONPATH, A, B, A, B, ... for AB_ROUNDS rounds,
# so that a drift of the machine shows as a difference between rounds, not
# between trees. In the command, {out} stands for the run's own output
# folder, $OUT/ab/<a|b>-<round>.
#
#   AB_TREE=ab-tree benchmarks/experiments/ab_builds.sh \
#     python -m macko_spmv bench --shapes 8192x8192 --densities 0.5 --out {out} --no-plot
#
# AB_BUILD=0 skips the builds (trees already built on this machine).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/ab-out}
TREE_B=${AB_TREE:?AB_TREE: the folder of tree B}
ROUNDS=${AB_ROUNDS:-2}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/ab"
tree_a=$PWD
tree_b=$(cd "$TREE_B" && pwd)

build() {  # tree, log
  local arch jobs
  arch=$($PYTHON -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  jobs=$(( $(nproc) / 2 > 1 ? $(nproc) / 2 : 1 ))
  (cd "$1" && TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=$jobs MACKO_BUILD_CUDA=1 \
    $PYTHON setup.py build_ext --inplace) >"$2" 2>&1
}

if [ "${AB_BUILD:-1}" = 1 ]; then
  echo "=== builds: $(date -u +%H:%M:%S)"
  build "$tree_a" "$OUT/ab/build-a.log" & pid_a=$!
  build "$tree_b" "$OUT/ab/build-b.log" & pid_b=$!
  wait $pid_a || { tail -30 "$OUT/ab/build-a.log"; echo "BUILD A FAILED"; exit 1; }
  wait $pid_b || { tail -30 "$OUT/ab/build-b.log"; echo "BUILD B FAILED"; exit 1; }
fi
(cd "$tree_a" && git log -1 --format='A: %h %s' 2>/dev/null || echo "A: $tree_a") | tee "$OUT/ab/trees.txt"
echo "B: $tree_b" | tee -a "$OUT/ab/trees.txt"

status=0
for round in $(seq 1 "$ROUNDS"); do
  for label in a b; do
    tree=$tree_a
    [ "$label" = b ] && tree=$tree_b
    run_out="$OUT/ab/$label-$round"
    mkdir -p "$run_out"
    command=("${@//\{out\}/$run_out}")
    echo "=== $label round $round: $(date -u +%H:%M:%S)"
    (cd "$tree" && PYTHONPATH="$tree" "${command[@]}") >"$run_out/log.txt" 2>&1 || { status=1; tail -20 "$run_out/log.txt"; }
  done
done
exit $status
