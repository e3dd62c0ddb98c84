"""TRL's batch rules: how many completions and prompts one optimizer step takes, and GRPO's
batch divisibility at a world size (`GRPOConfig.__post_init__` of TRL 1.14.2), with the override
that fixes a layout that breaks. Pure arithmetic on a recipe's `grpo:` / `sft:` values (or a TRL
config), used by `train` before the trainer is built, by `plan` and by the dry run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def prompts_per_step(per_device: int, accumulation: int, world_size: int,
                     num_generations: int = 1) -> int:
    """Distinct prompts per optimizer step: the completions of a step (per device x
    accumulation x processes) over the completions of one prompt (GRPO's `num_generations`;
    1 for SFT).

    >>> prompts_per_step(8, 8, 2, 8), prompts_per_step(4, 2, 1)
    (16, 8)
    """
    completions = per_device * accumulation * max(world_size, 1)
    return max(completions // max(num_generations, 1), 1)


def config_prompts_per_step(args: Any) -> int:
    """`prompts_per_step` of a built TRL config (GRPOConfig, SFTConfig)."""
    return prompts_per_step(args.per_device_train_batch_size, args.gradient_accumulation_steps,
                            args.world_size, getattr(args, "num_generations", 1))


@dataclass(frozen=True)
class BatchLayout:
    """TRL's GRPO batch geometry at `world_size` processes, or why TRL refuses it and the
    overrides that fix it."""

    world_size: int
    per_device: int
    accumulation: int
    num_generations: int
    generation_batch: int | None  # global; None when TRL would refuse
    steps_per_generation: int | None
    problem: str | None = None
    fix: list[str] = field(default_factory=list)

    @property
    def prompts_per_step(self) -> int:
        return prompts_per_step(self.per_device, self.accumulation, self.world_size,
                                self.num_generations)


def grpo_layout(values: Mapping[str, Any], world_size: int,
                defaults: Mapping[str, Any] | None = None) -> BatchLayout:
    """The GRPO batch layout of a `grpo:` section at `world_size`, by the rules of TRL 1.14.2's
    `GRPOConfig.__post_init__` (tests check the two agree on every shipped recipe): the global
    generation batch is a multiple of `per_device_train_batch_size x world_size` and of
    `num_generations`; `generation_batch_size` and `steps_per_generation` exclude each other.
    A problem comes with the overrides that fix it: `steps_per_generation`, which scales with
    the world size (`_layout_fix`).

    >>> music = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 8,
    ...          "generation_batch_size": 32, "num_generations": 8}
    >>> grpo_layout(music, 1).steps_per_generation, grpo_layout(music, 2).generation_batch
    (4, 32)
    >>> bad = grpo_layout(music, 3)
    >>> bad.problem
    'generation_batch_size (32) must be divisible by the global batch size (24 = 8 per device x 3)'
    >>> bad.fix
    ['grpo.generation_batch_size=null', 'grpo.steps_per_generation=4']
    >>> fixed = {**music, "generation_batch_size": None, "steps_per_generation": 4}
    >>> grpo_layout(fixed, 8).generation_batch, grpo_layout(fixed, 8).prompts_per_step
    (256, 64)
    """
    get = {**(defaults or {}), **values}.get
    per_device = int(get("per_device_train_batch_size") or 8)
    accumulation = int(get("gradient_accumulation_steps") or 1)
    groups = int(get("num_generations") or 8)
    generation, steps = get("generation_batch_size"), get("steps_per_generation")
    micro = per_device * world_size
    base = {"world_size": world_size, "per_device": per_device, "accumulation": accumulation,
            "num_generations": groups}
    problem = None
    if generation is not None and steps is not None:
        problem = "generation_batch_size and steps_per_generation cannot both be set"
    elif generation is not None:
        if int(generation) % micro:
            problem = (f"generation_batch_size ({generation}) must be divisible by the global "
                       f"batch size ({micro} = {per_device} per device x {world_size})")
        else:
            steps = int(generation) // micro
    else:
        steps = int(steps or accumulation)
        generation = micro * steps
    if problem is None and int(generation) % groups:
        problem = (f"the generation batch ({generation} = {per_device} per device x {world_size} "
                   f"x {steps} steps_per_generation) must be divisible by num_generations "
                   f"({groups})")
    if groups < 2:
        problem = f"num_generations must be at least 2 (got {groups})"
    if problem is None:
        return BatchLayout(**base, generation_batch=int(generation), steps_per_generation=steps)
    return BatchLayout(**base, generation_batch=None, steps_per_generation=None, problem=problem,
                       fix=_layout_fix(values, per_device, accumulation, groups, world_size))


def _layout_fix(values: Mapping[str, Any], per_device: int, accumulation: int, groups: int,
                world_size: int) -> list[str]:
    """Overrides that make the layout valid: `steps_per_generation`, so that each GPU generates
    at most the rollouts the recipe's `generation_batch_size` asks of one GPU (its memory), at
    most one optimizer step's worth (more would train on stale rollouts), and whole groups."""
    if groups < 2:
        return ["grpo.num_generations=2"]
    asked = values.get("generation_batch_size") or per_device * int(
        values.get("steps_per_generation") or accumulation)
    unit = groups // math.gcd(groups, per_device * world_size)  # steps that hold whole groups
    steps = min(int(asked) // per_device, accumulation) // unit * unit
    fix = []
    if values.get("generation_batch_size") is not None:
        fix.append("grpo.generation_batch_size=null")
    return [*fix, f"grpo.steps_per_generation={max(steps, unit)}"]
