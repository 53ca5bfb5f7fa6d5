#!/usr/bin/env bash
# R3 of the reading issue on a lent GPU, in one command: label SQuAD + SQuADShifts with the base generator, train the
# ScaleDown designs side by side, evaluate them paired against the uncompressed generator on held-out articles, then
# time them (benchmarks/gpu_quality_run.py has the stages). Everything lands in OUTPUT_DIR (quality.json, logs,
# speed/). Budget: --budget-seconds (default 540) of an H200.
#
#   bash benchmarks/gpu_quality_run.sh OUTPUT_DIR [gpu_quality_run.py options]
#   bash benchmarks/gpu_quality_run.sh outputs/gpu-dry --dry-run --device cpu     # the CPU check (~1-2 min)
#   SCALEDOWN_USE_CARRIED=1 bash benchmarks/gpu_quality_run.sh --stash            # only keep what this call carried
#
# On a machine with no network, SCALEDOWN_USE_CARRIED=1 takes what it lacks from .gpu/ (see benchmarks/gpu_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
if [ "${1:-}" = "--stash" ]; then exit 0; fi
OUTPUT_DIR=${1:?usage: benchmarks/gpu_quality_run.sh OUTPUT_DIR [options]}
shift
EXTRA=()
if [ -n "${SCALEDOWN_SQUAD_DIR:-}" ]; then EXTRA+=(--squad-dir "$SCALEDOWN_SQUAD_DIR"); fi
if [ -n "${SCALEDOWN_TOKENIZER:-}" ]; then EXTRA+=(--tokenizer "$SCALEDOWN_TOKENIZER"); fi
mkdir -p "$OUTPUT_DIR"
"$PYTHON" benchmarks/gpu_quality_run.py --output-dir "$OUTPUT_DIR" ${EXTRA[@]+"${EXTRA[@]}"} "$@" 2>&1 | tee "$OUTPUT_DIR/run.log"
