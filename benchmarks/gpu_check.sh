#!/usr/bin/env bash
# The speed check of the fast-by-default issue on a lent GPU: the user's path (`scaledown benchmark --path user`: the
# saved folder loaded as the README says + generate_from_text, against AutoModelForCausalLM + generate on the raw
# documents, SDPA attention) in bfloat16 at batch 1, 16, 64 and 256, 10 documents x 128 tokens, 32 new tokens, with
# time to first token and peak memory. Writes OUTPUT_DIR/benchmark-user.json and .png (and run.log). A few minutes.
#
#   bash benchmarks/gpu_check.sh OUTPUT_DIR [scaledown benchmark options]
#   bash benchmarks/gpu_check.sh outputs/gpu-check-dry --dry-run                  # the CPU check (~1 min)
#
# The model is SmolLM2-135M-Instruct + a 5-layer compressor (the shipped small configuration; speed does not depend
# on training, so a fresh one serves). On a machine with no network, SCALEDOWN_USE_CARRIED=1 takes what it lacks
# from .gpu/ (see benchmarks/gpu_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
OUTPUT_DIR=${1:?usage: benchmarks/gpu_check.sh OUTPUT_DIR [options]}
shift
ARGS=(--device cuda --dtypes bfloat16 --batch-sizes 1 16 64 256 --repetitions 5)
if [ "${1:-}" = "--dry-run" ]; then
    shift
    ARGS=(--device cpu --dtypes float32 --batch-sizes 1 --repetitions 1 --new-tokens 4 --num-documents 2)
fi
mkdir -p "$OUTPUT_DIR"
MODEL=/tmp/scaledown-gpu-check-model
"$PYTHON" - "$MODEL" <<'PY' 2>&1 | tee "$OUTPUT_DIR/run.log"
import sys

from scaledown import ScaleDownForCausalLM
from scaledown.offline_weights import smollm2_path

model = ScaleDownForCausalLM.from_generator(
    str(smollm2_path()), num_compressor_layers=5, memory_injection_layer=5, memory_slots="chunk_attention"
)
model.save_pretrained(sys.argv[1])
PY
"$PYTHON" -m scaledown.cli benchmark --path user --model "$MODEL" --output-dir "$OUTPUT_DIR" "${ARGS[@]}" "$@" 2>&1 \
    | tee -a "$OUTPUT_DIR/run.log"
