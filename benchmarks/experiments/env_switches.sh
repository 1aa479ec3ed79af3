#!/usr/bin/env bash
# One build, several settings of the kernels' experiment switches
# (environment variables read once per process, e.g. MACKO_TILE_SEGMENT_COLS),
# timed in turn in one GPU session: the in-process counterpart of
# ab_builds.sh. Each setting is a label and a comma-separated list of
# NAME=VALUE ("base" alone: no switch set); the command runs once per
# setting per round, settings in the given order, for SWITCH_ROUNDS rounds,
# so that a drift of the machine shows between rounds, not between
# settings. In the command, {out} stands for the run's own output folder,
# $OUT/switches/<label>-<round>.
#
#   SWITCHES="base general:MACKO_TILE_LANE_X_COPIES=0 narrow:MACKO_TILE_SEGMENT_COLS=256" \
#     benchmarks/experiments/env_switches.sh \
#     python -m macko_spmv bench --route tiles --batch 8,16 --no-plot --out {out}
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/switches-out}
ROUNDS=${SWITCH_ROUNDS:-2}
read -r -a settings <<<"${SWITCHES:?SWITCHES: label:NAME=VALUE,... settings, space-separated}"
mkdir -p "$OUT/switches"
printf '%s\n' "${settings[@]}" >"$OUT/switches/settings.txt"
status=0
for round in $(seq 1 "$ROUNDS"); do
  for setting in "${settings[@]}"; do
    label=${setting%%:*}
    assignments=()
    if [[ "$setting" == *:* ]]; then IFS=, read -r -a assignments <<<"${setting#*:}"; fi
    run_out="$OUT/switches/$label-$round"
    mkdir -p "$run_out"
    command=("${@//\{out\}/$run_out}")
    echo "=== $label round $round (${assignments[*]:-no switch}): $(date -u +%H:%M:%S)"
    env "${assignments[@]}" "${command[@]}" >"$run_out/log.txt" 2>&1 || { status=1; tail -20 "$run_out/log.txt"; }
  done
done
exit $status
