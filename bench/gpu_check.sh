#!/usr/bin/env bash
# GPU check (issue 17): the CUDA path end to end on a tiny random-weight Qwen2.5, one table.
#
# Unsloth QLoRA GRPO (music-grpo, 2 steps), SFT (music-sft) -> GRPO (music-recone) with each
# model's fused-LoRA kernels reported, merged export, predict through hf and vLLM. No hub, no
# network: the model, its tokenizer and the data are made on the spot (bench/gpu_check.py says
# how). A package that is not installed is a `skipped: <package> not installed` row.
#
# Usage, from anywhere (runs from the repository root):
#     bash bench/gpu_check.sh                       # under 10 minutes on one CUDA GPU
#     GPU_CHECK_BUDGET=300 bash bench/gpu_check.sh  # a smaller total budget (seconds)
#     bash bench/gpu_check.sh --cpu                 # rehearse the steps on CPU (plumbing only)
#     PYTHON=.venv/bin/python bash bench/gpu_check.sh --only grpo,sft
# The table goes to stdout and to $OUT/gpu_check.md (+ .json, step logs) when OUT is set, else
# bench/results/gpu_check.md. Exit 0 when no step failed or timed out (skips are fine).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PYTHON=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-540}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$PYTHON' (set PYTHON=...)" >&2
    exit 2
fi
# Each step has its own timeout inside the script, and the budget trims the later steps; this
# outer one is a backstop only. On SIGTERM the script kills its running step and still writes
# the table, with the steps it did not reach marked skipped.
if command -v timeout >/dev/null 2>&1; then
    exec timeout --signal=TERM --kill-after=20 "$((${BUDGET%.*} + 40))" \
        "$PYTHON" bench/gpu_check.py --budget "$BUDGET" "$@"
fi
exec "$PYTHON" bench/gpu_check.py --budget "$BUDGET" "$@"
