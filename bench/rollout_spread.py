"""Does GRPO have anything to learn from? The spread of an adapter's own rollouts on dev.

GRPO's advantage is a rollout's reward minus its group's mean: where every rollout of a prompt
earns the same reward, the group teaches nothing (TRL logs the share as `frac_reward_zero_std`;
`train` raises its flat-groups alarm). This samples `grpo.num_generations` completions per dev
prompt at the GRPO temperature from an adapter (the warm-up's, before spending GRPO steps on it)
and prints how many groups differ in rating and in reward (the recipe's reward functions).

    python bench/rollout_spread.py runs/cpu-quality/warmup-adapter               # 16 dev prompts
    python bench/rollout_spread.py ADAPTER --limit 32 --temperature 1.5 warmup.teacher=estimate

The recipe (cpu-quality by default, with overrides) gives the prompt, the group size and the
temperature; the adapter is scored as it is. ~6 minutes for 16 prompts x 4 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recone_lite.config import load_recipe  # noqa: E402
from recone_lite.predict import predict, recipe_options  # noqa: E402
from recone_lite.rewards import reward_functions  # noqa: E402
from recone_lite.training import load_data  # noqa: E402


def group_rewards(completions: list[str], truth: float,
                  functions: list[Callable[..., list[float]]]) -> list[float]:
    """The summed reward of each rollout of one prompt, by the recipe's reward functions.

    >>> functions = reward_functions(["format", "answer"], "none", (1.0, 5.0))
    >>> group_rewards(["<rate>4</rate>", "<rate>3</rate>", "none"], 4.0, functions)
    [1.5, 1.25, -0.5]
    """
    scores = [f(None, completions, rating=[truth] * len(completions)) for f in functions]
    return [sum(column) for column in zip(*scores, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key.sub=value")
    parser.add_argument("--recipe", default="cpu-quality")
    parser.add_argument("--limit", type=int, default=16, help="dev prompts (seeded, as train's)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="default: the recipe's grpo.temperature")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    section, grpo = recipe.data, recipe.grpo or {}
    generations = int(grpo.get("num_generations", 4))
    temperature = args.temperature if args.temperature is not None else \
        float(grpo.get("temperature", 1.0))
    data = load_data(section, {section.eval_split: args.limit}, recipe.seed)
    dev = data.splits[section.eval_split]
    with tempfile.TemporaryDirectory() as tmp:
        requests, rows_path = Path(tmp) / "requests.jsonl", Path(tmp) / "rows.jsonl"
        requests.write_text("".join(json.dumps(e) + "\n" for e in dev), encoding="utf-8")
        started = time.perf_counter()
        options = recipe_options(recipe)
        options["max_new_tokens"] = int(grpo.get("max_completion_length", 256))
        predict(str(requests), **options, adapter=str(args.adapter), temperature=temperature,
                samples=generations, seed=recipe.seed, out=str(rows_path), completion=True,
                readout="text")
        seconds = time.perf_counter() - started
        rows = {row["id"]: row for row in map(json.loads, rows_path.open(encoding="utf-8"))}
    groups = [(rows[e["id"]], float(e["rating"])) for e in dev if e["id"] in rows]
    rating_spread = sum(len(set(row["ratings"])) > 1 for row, _ in groups)
    functions = reward_functions(recipe.rewards, section.template, data.scale)
    stds = [statistics.pstdev(group_rewards(row["completion"], truth, functions))
            for row, truth in groups]
    parsed = sum(r is not None for row, _ in groups for r in row["ratings"])
    print(f"| {len(groups)} dev prompts x {generations} rollouts, T = {temperature} | value |\n"
          f"|---|---|\n"
          f"| rollouts with a rating | {parsed} of {len(groups) * generations} |\n"
          f"| groups whose ratings differ | {rating_spread} |\n"
          f"| groups whose reward differs (GRPO learns from these) | "
          f"{sum(s > 0 for s in stds)} |\n"
          f"| mean reward std within a group | {statistics.mean(stds) if stds else 0:.4f} |")
    print(f"{args.adapter}: {seconds / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
