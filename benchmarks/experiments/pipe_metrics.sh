#!/usr/bin/env bash
# Nsight Compute's per-pipe counters (shared-memory wavefronts, bank
# conflicts, pipe utilisation, issue and stall ratios, DRAM throughput) of
# the multiply kernels, once per experiment variant, so that what a variant
# saves in time can be set against what it saves on each pipe (NOTES v16a).
# The metrics are the candidates below that this ncu knows (an unknown name
# would fail the whole run), so the list can name metrics of several
# architectures. Output: $OUT/pipe-metrics/switches/<kernel>-<variant>-1/ncu.csv
# per setting (env_switches.sh), and metrics.txt (the names used).
#
#   OUT=/tmp/o benchmarks/experiments/pipe_metrics.sh
#
# STREAM_CASES / TILE_CASES: profile_multiply.py cases for the streaming
# kernel's variants (MACKO_STREAM_VARIANT) and the tile kernel's
# (MACKO_TILE_VARIANT); either may be empty to skip it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/pipe-metrics-out}
PYTHON=${PYTHON:-python3}
STREAM_CASES=${STREAM_CASES-8192x8192:0.5:1:stream 8192x8192:0.1:1:stream 4096x4096:0.5:1:stream}
TILE_CASES=${TILE_CASES-8192x8192:0.5:8:tiles 8192x8192:0.1:8:tiles}
mkdir -p "$OUT/pipe-metrics"
candidates=(
  gpu__time_duration.sum
  dram__throughput.avg.pct_of_peak_sustained_elapsed
  smsp__inst_executed.sum
  smsp__issue_active.avg.pct_of_peak_sustained_active
  l1tex__data_pipe_lsu_wavefronts.sum
  l1tex__data_pipe_lsu_wavefronts.avg.pct_of_peak_sustained_elapsed
  l1tex__data_pipe_lsu_wavefronts_mem_shared.sum
  l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed
  l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum
  l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum
  l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum
  l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum
  smsp__inst_executed_op_shared_ld.sum
  smsp__inst_executed_op_shared_st.sum
  smsp__inst_executed_op_ldsm.sum
  smsp__inst_executed_op_ldgsts.sum
  sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active
  sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active
  sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active
  sm__inst_executed_pipe_adu.avg.pct_of_peak_sustained_active
  sm__inst_executed_pipe_uniform.avg.pct_of_peak_sustained_active
  sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
  sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
  sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active
  sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
  smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio
  smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio
  smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio
  smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio
  smsp__average_warps_issue_stalled_wait_per_issue_active.ratio
  smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio
  smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio
  smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio
  smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio
  smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio
)
known=$(ncu --query-metrics 2>/dev/null | awk '{print $1}')
metrics=()
for m in "${candidates[@]}"; do
  base=${m%%.*}
  if grep -qx "$base" <<<"$known"; then metrics+=("$m"); else echo "pipe_metrics: ncu does not know $base; left out"; fi
done
printf '%s\n' "${metrics[@]}" >"$OUT/pipe-metrics/metrics.txt"
list=$(IFS=,; echo "${metrics[*]}")

run_variants() {  # label prefix, kernel regex, variable, cases, variants...
  local prefix=$1 kernel=$2 variable=$3 cases=$4
  shift 4
  local settings=()
  for v in "$@"; do settings+=("$prefix-$v:$variable=$v"); done
  OUT="$OUT/pipe-metrics" SWITCH_ROUNDS=1 SWITCHES="${settings[*]}" bash benchmarks/experiments/env_switches.sh \
    ncu --clock-control none --metrics "$list" -k "regex:$kernel" --csv --log-file "{out}/ncu.csv" \
    $PYTHON benchmarks/profile_multiply.py $cases
}
status=0
if [ -n "$STREAM_CASES" ]; then run_variants stream multiply_kernel MACKO_STREAM_VARIANT "$STREAM_CASES" product decode ring || status=1; fi
if [ -n "$TILE_CASES" ]; then
  run_variants tiles tile_multiply MACKO_TILE_VARIANT "$TILE_CASES" product no-mma no-stores walk || status=1
fi
exit $status
