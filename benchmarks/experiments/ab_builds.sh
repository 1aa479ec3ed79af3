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
# AB_BUILD=0 skips the builds (trees already built on this machine);
# AB_BUILD=b builds tree B only (A built already, e.g. by gpu_check.sh's
# build stage, which runs this as its stage "ab").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/ab-out}
TREE_B=${AB_TREE:?AB_TREE: the folder of tree B}
ROUNDS=${AB_ROUNDS:-2}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/ab"
tree_a=$PWD
tree_b=$(cd "$TREE_B" && pwd)

build() {  # tree, log, jobs
  local arch
  arch=$($PYTHON -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  (cd "$1" && TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=$3 MACKO_BUILD_CUDA=1 \
    $PYTHON setup.py build_ext --inplace) >"$2" 2>&1 || { tail -30 "$2"; echo "BUILD FAILED: $1"; exit 1; }
}

cores=$(nproc)
case "${AB_BUILD:-1}" in
  1)
    echo "=== builds: $(date -u +%H:%M:%S)"
    half=$(( cores / 2 > 1 ? cores / 2 : 1 ))
    build "$tree_a" "$OUT/ab/build-a.log" "$half" & pid_a=$!
    build "$tree_b" "$OUT/ab/build-b.log" "$half" & pid_b=$!
    wait $pid_a || exit 1
    wait $pid_b || exit 1
    ;;
  b)
    echo "=== build of B: $(date -u +%H:%M:%S)"
    build "$tree_b" "$OUT/ab/build-b.log" "$cores"
    ;;
esac
# Paths only: a copied tree's .git (if any) need not be its code's commit,
# so which code each tree held goes in the results' README by hand.
printf 'A: %s\nB: %s\n' "$tree_a" "$tree_b" | tee "$OUT/ab/trees.txt"

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
