#!/usr/bin/env bash
# GPU check (issues 17, 26): the CUDA path end to end on a tiny random-weight Qwen2.5, one table.
#
# Unsloth QLoRA GRPO (music-grpo, 2 steps), SFT (music-sft) -> GRPO (music-recone) with each
# model's fused-LoRA kernels reported, merged export, predict through hf and vLLM. No hub, no
# network: the model, its tokenizer and the data are made on the spot (bench/gpu_check.py says
# how). The packages the lent machine lacks come from .gpu-bundle/site (bench/gpu_bundle.sh
# builds it here; a device call carries it), put first on PYTHONPATH when it exists.
#
# This script runs the check on the GPU TARGET (`--strict`): no CUDA device, a missing package,
# a failed `import unsloth`, a kernel row other than `yes` or a step the budget did not reach is
# a failure (exit 1), never a skip. Only vLLM is optional (`not run` when absent: too large to
# carry). `--cpu` rehearses the steps on CPU with shrunken settings, skips allowed.
#
# Usage, from anywhere (runs from the repository root):
#     bash bench/gpu_check.sh                       # ~8 minutes at most on one CUDA GPU
#     GPU_CHECK_BUDGET=300 bash bench/gpu_check.sh  # a smaller total budget (seconds)
#     bash bench/gpu_check.sh --cpu                 # rehearse the steps on CPU (plumbing only)
#     PYTHON=.venv/bin/python bash bench/gpu_check.sh --only grpo,sft
# Results: $OUT/gpu_check.md (the table and a PASSED / FAILED line), $OUT/gpu_check.json and
# $OUT/gpu_check_logs.tar.gz (step logs, probes, run.json files) when OUT is set, else the table
# and JSON in bench/results. Exit 0 only when every required row passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-480}
# The bundle holds CPython 3.12 builds (pydantic_core, msgspec): only for a 3.12 interpreter.
BUNDLE_SITE=${GPU_CHECK_BUNDLE:-$PWD/.gpu-bundle/site}
strict=(--strict)
for arg in "$@"; do
    if [ "$arg" = "--cpu" ]; then strict=(); fi
done
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PYTHON' (set PYTHON=...)" >&2
    exit 2
fi
if [ -d "$BUNDLE_SITE" ] && "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    export PYTHONPATH="$BUNDLE_SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: bundle on PYTHONPATH: $BUNDLE_SITE ($(head -1 "$BUNDLE_SITE/BUNDLE.txt" 2>/dev/null))" >&2
fi
# Each step has its own timeout inside the script, and the budget trims the later steps; this
# outer one is a backstop only. On SIGTERM the script kills its running step and still writes
# the table, with the steps it did not reach marked skipped.
if command -v timeout >/dev/null 2>&1; then
    exec timeout --signal=TERM --kill-after=20 "$((${BUDGET%.*} + 40))" \
        "$PYTHON" bench/gpu_check.py --budget "$BUDGET" ${strict[@]+"${strict[@]}"} "$@"
fi
exec "$PYTHON" bench/gpu_check.py --budget "$BUDGET" ${strict[@]+"${strict[@]}"} "$@"
