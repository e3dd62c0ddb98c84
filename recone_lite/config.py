"""Typed recipes: YAML files loaded into pydantic models that reject unknown keys.

A recipe names a model, a prepared data set, a LoRA adapter, the rewards and the trainer's own
settings. The `grpo:` and `sft:` sections are passed to TRL's `GRPOConfig` / `SFTConfig` as they
are (we do not re-invent TRL's knobs); their keys are checked against those dataclasses' fields
and their values against the fields' types, so a misspelt key or a wrong value is an error at
load time too, not after the model has loaded. `extends: NAME` starts from another recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import importlib
import importlib.resources
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from recone_lite.errors import InputError, first_line, validation_problem
from recone_lite.models import ModelSpec
from recone_lite.prompts import TEMPLATES
from recone_lite.rewards import REWARDS

# A recipe's reward names, checked against rewards.REWARDS, their one home (the Literal is built
# from it, so the error names the choices: "rewards.0: Input should be 'format', ... or ...").
RewardName = Literal[REWARDS]  # type: ignore[valid-type]
TemplateName = Literal[TEMPLATES]  # type: ignore[valid-type]  # prompts.TEMPLATE_BLOCKS' keys


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(Strict):
    """Where the prepared data set lives and how prompts are rendered from it."""

    dir: str = Field(description="prepared data directory (from `recone-lite data prepare`)")
    template: TemplateName = "reczero"
    max_prompt_tokens: int = Field(2048, gt=0)
    train_split: str = "train"
    eval_split: str = "dev"
    train_limit: int | None = Field(None, gt=0, description="use at most this many train examples")
    eval_limit: int | None = Field(64, gt=0, description="dev examples per evaluation (a sample "
                                   "drawn with a fixed seed: the same rows whatever the seed)")
    max_history: int | None = Field(
        None, gt=0, description="show at most the newest N history items (the budget may cut more)"
    )
    item_history: int = Field(
        5, ge=0, description="show the target item's newest N earlier ratings by other users "
        "(prepared as `item_history`; 0: none, the paper's plain prompt)")
    stats: bool = Field(
        True, description="show one line of rating statistics (user, item and global means, "
        "prepared as `stats`); false: the paper's plain prompt")
    system: Literal["full", "compact"] = Field(
        "full", description="the system prompt: `full` spells each step out (the paper's); "
        "`compact` says the same in ~1/4 of the tokens, for small models and short budgets")
    cf: list[Literal["biases", "mf", "knn"]] = Field(
        default_factory=list, description="show these collaborative predictions (prepared as "
        "`cf`: user+item bias, biased MF, item-kNN; fitted on train, out of fold for train "
        "examples; docs/data.md) in a cf_predictions line; []: none, the paper's prompt")
    train_recent: int | None = Field(
        None, gt=0, description="train on each user's newest N train examples only (the ones "
        "nearest in time to dev and test; their `cf` is from recency folds)")


class LoraSection(Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class WarmupSection(Strict):
    """SFT steps before GRPO on offline traces (no teacher model): `template` traces teach a
    tiny model the tag format; `evidence` traces (traces.evidence_answer) also reason from the
    prompt's evidence to the true rating, a rationalized warm-up. Neither is RecOne."""

    steps: int = Field(20, gt=0)
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(4, gt=0)
    split: Literal["coldstart", "train"] = Field(
        "coldstart", description="the pool of the traces: the cold-start split (when prepared), "
        "or the train examples GRPO draws from (data.train_split, data.train_recent), shuffled")
    teacher: Literal["template", "evidence", "estimate", "mixed"] = Field(
        "template", description="`template`: the tags and the true rating; `evidence`: reasons "
        "from the prompt's evidence to the true rating; `estimate`: the same reasoning ending in "
        "the prompt's estimate (a statistical teacher: the model learns to copy its evidence); "
        "`mixed`: every other trace ends in the estimate, the rest in the estimate rounded to a "
        "whole star, so the model samples two answers and GRPO's reward chooses between them")


class EvalSection(Strict):
    max_new_tokens: int = Field(256, gt=0)
    readout: Literal["text", "expected"] = Field(
        "text", description="`text`: the number written in <rate>; `expected`: the mean of the "
        "model's distribution over the scale's rating tokens right after <rate> (readout.py)")
    batch_size: int = Field(8, gt=0)
    at_start: bool = Field(True, description="evaluate on dev before training too (GRPO)")


class Job(BaseModel):
    """One adapter's training run: which recipe, how many GPUs, which overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="names the run dir")
    recipe: str | None = Field(None, description="recipe name or file [default: this recipe]")
    gpus: int = Field(1, gt=0, description="GPUs (accelerate processes) of this job")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value for `train`")
    accelerate_config: str | None = Field(None, description="[default: the launch section's]")


class LaunchSection(BaseModel):
    """The `launch:` section of a recipe: the node and the jobs that share it."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(8, gt=0, description="GPUs on the node; jobs take them in order")
    accelerate_config: str = Field(
        "ddp", description="recipes/accelerate/NAME.yaml (ddp, zero2, zero3) or a path"
    )
    output_dir: str = Field("runs/launch", description="each job trains into OUTPUT_DIR/NAME")
    jobs: list[Job] = Field(min_length=1)

    @model_validator(mode="after")
    def _jobs_fit(self) -> LaunchSection:
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names repeat: {', '.join(names)}")
        wanted = sum(job.gpus for job in self.jobs)
        if wanted > self.gpus:
            raise ValueError(f"the jobs ask for {wanted} GPUs; the node has {self.gpus}")
        return self


class Recipe(Strict):
    """One training run: model + data + adapter + rewards + TRL's own trainer settings."""

    description: str = ""
    kind: Literal["grpo", "sft"] = "grpo"
    model: ModelSpec
    data: DataSection
    lora: LoraSection = LoraSection()
    rewards: list[RewardName] = ["format", "answer"]
    init_adapter: str | None = Field(None, description="start from this adapter (RecOne: SFT)")
    warmup: WarmupSection | None = None
    evaluation: EvalSection = EvalSection()
    grpo: dict[str, Any] = Field(default_factory=dict, description="passed to trl.GRPOConfig")
    sft: dict[str, Any] = Field(default_factory=dict, description="passed to trl.SFTConfig")
    output_dir: str = "runs/run"
    seed: int = 0
    launch: LaunchSection | None = Field(
        None, description="jobs that `recone-lite launch` runs side by side (launch.py)")

    @model_validator(mode="after")
    def _trainer_keys_exist(self) -> Recipe:
        """Each `grpo:` / `sft:` key is a field of TRL's config and its value fits the field's
        type, so `grpo.learning_rate=abc` fails here, not in the trainer after the model loads.
        A number or boolean written as a string (YAML 1.1 reads `1e-5` as one) is converted."""
        for section in ("grpo", "sft"):
            values = getattr(self, section)
            unknown = sorted(set(values) - trainer_fields(section))
            if unknown:
                hint = _suggest(unknown[0], section)
                raise ValueError(f"{section}.{unknown[0]}: unknown key{hint}")
            for key, value in values.items():
                values[key] = check_trainer_value(section, key, value)
                check_trainer_range(section, key, values[key])
        check_sizes(self.model_dump(mode="python"))
        return self


def field_accepts(model: type[BaseModel], name: str, value: Any) -> bool:
    """Whether `value` passes the schema's own check of the field `model.name` (its type and
    range, strictly: no string, float or bool taken for an integer). How a run's recipe.yaml or
    an export's recone.json is read leniently, field by field: a value the schema refuses counts
    as not recorded, and the range lives in the schema alone (`DataSection.max_prompt_tokens`:
    `gt=0`).

    >>> [field_accepts(DataSection, "max_prompt_tokens", v) for v in (300, 0, True, "300", None)]
    [True, False, False, False, False]
    """
    try:
        _field_adapter(model, name).validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    field = model.model_fields[name]
    return TypeAdapter(typing.Annotated[(field.annotation, *field.metadata)])


def trainer_fields(section: str) -> set[str]:
    """Field names of TRL's GRPOConfig / SFTConfig (imports trl, so only on validation)."""
    return set(_trainer_types(section)) - {"output_dir"}


@functools.cache
def _trainer_types(section: str) -> dict[str, Any]:
    """`{field: type annotation}` of TRL's GRPOConfig / SFTConfig, resolved from the dataclass
    (TRL declares them as strings: `from __future__ import annotations`)."""
    import trl

    config = trl.GRPOConfig if section == "grpo" else trl.SFTConfig
    hints = typing.get_type_hints(config)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config)}


def trainer_defaults(section: str) -> dict[str, Any]:
    """The defaults of TRL's GRPOConfig / SFTConfig fields (imports trl)."""
    import trl

    config = trl.GRPOConfig if section == "grpo" else trl.SFTConfig
    return {f.name: f.default for f in dataclasses.fields(config)
            if f.default is not dataclasses.MISSING}


@functools.cache
def _type_adapter(section: str, key: str) -> TypeAdapter | None:
    try:
        return TypeAdapter(_trainer_types(section)[key],
                           config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # a type pydantic cannot check (none in TRL 1.14.2): TRL checks it
        return None


def check_trainer_value(section: str, key: str, value: Any) -> Any:
    """`value` checked against the type of TRL's `section` config field `key`; a ValueError
    names `section.key`. Returns the value, a string converted when it spells a number or bool.

    >>> check_trainer_value("grpo", "learning_rate", "1e-5"), check_trainer_value("grpo",
    ...     "save_steps", 25), check_trainer_value("sft", "lr_scheduler_type", "cosine")
    (1e-05, 25, 'cosine')
    >>> check_trainer_value("grpo", "learning_rate", "abc")
    Traceback (most recent call last):
    ...
    ValueError: grpo.learning_rate: Input should be a valid number, unable to parse string as a \
number (got 'abc')
    """
    adapter = _type_adapter(section, key)
    if adapter is None:
        return value
    try:
        checked = adapter.validate_python(value)
    except ValidationError as err:
        # a union (`str | list[str]`) reports one error per member: the deepest is the one that
        # came closest (a list with a bad item); member names in `loc` are dropped, indices kept
        first = max(err.errors(), key=lambda e: len(e["loc"]))
        where = "".join(f"[{p}]" for p in first["loc"] if isinstance(p, int))
        raise ValueError(f"{section}.{key}{where}: {first['msg']} (got {value!r})") from None
    converted = isinstance(value, str) and type(checked) in (int, float, bool)
    return checked if converted else value


MAX_INT = 2**31 - 1  # every count, length and seed a recipe sets fits an int32 (torch, numpy)


def _positive(value: Any) -> bool:
    return math.isfinite(value) and value > 0


def _not_negative(value: Any) -> bool:
    return math.isfinite(value) and value >= 0


# TRL / transformers values that type-check and then crash or train on nonsense; None (TRL's
# "not set") passes. Key -> (test, what it must be).
TRAINER_RANGES: dict[str, tuple[Any, str]] = {
    "learning_rate": (_positive, "a finite number > 0"),
    "temperature": (_positive, "a finite number > 0"),
    "num_generations": (lambda v: v >= 2, "at least 2 (GRPO compares the completions of a "
                        "prompt with each other)"),
    "num_generations_eval": (lambda v: v >= 1, "at least 1"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "beta": (_not_negative, "a finite number >= 0"),
    "epsilon": (_positive, "a finite number > 0"),
    "weight_decay": (_not_negative, "a finite number >= 0"),
    "max_grad_norm": (_not_negative, "a finite number >= 0"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "num_train_epochs": (_positive, "a finite number > 0"),
    "max_steps": (lambda v: v == -1 or v > 0, "> 0 (or -1: use num_train_epochs)"),
    **{key: (lambda v: v > 0, "> 0") for key in (
        "max_completion_length", "max_prompt_length", "max_length", "per_device_train_batch_size",
        "per_device_eval_batch_size", "gradient_accumulation_steps", "generation_batch_size",
        "steps_per_generation", "num_iterations", "save_steps", "logging_steps", "eval_steps")},
}


def check_trainer_range(section: str, key: str, value: Any) -> None:
    """A ValueError naming `section.key` when a TRL value is outside its sane range.

    >>> check_trainer_range("grpo", "num_generations", 0)
    Traceback (most recent call last):
    ...
    ValueError: grpo.num_generations: must be at least 2 (GRPO compares the completions of a \
prompt with each other) (got 0)
    >>> check_trainer_range("grpo", "learning_rate", float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: grpo.learning_rate: must be a finite number > 0 (got inf)
    """
    rule = TRAINER_RANGES.get(key)
    if rule is None or value is None or isinstance(value, bool) or \
            not isinstance(value, (int, float)):
        return
    test, what = rule
    if not test(value):
        raise ValueError(f"{section}.{key}: must be {what} (got {value!r})")


def check_sizes(node: Any, where: str = "") -> None:
    """Every number in a recipe is finite and every integer fits an int32 (a 20-digit size
    passes pydantic and overflows later): a ValueError names the key.

    >>> check_sizes({"data": {"max_history": 10**20}})
    Traceback (most recent call last):
    ...
    ValueError: data.max_history: 100000000000000000000 is too large (at most 2147483647)
    """
    if isinstance(node, dict):
        for key, value in node.items():
            check_sizes(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_sizes(value, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ValueError(f"{where}: must be a finite number (got {node!r})")
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INT:
        raise ValueError(f"{where}: {node} is too large (at most {MAX_INT})")


# `report_to` names transformers' tracking integrations; the Trainer imports each one only after
# the model has loaded. Integration -> (module its callback imports, PyPI package, extra or None).
INTEGRATIONS = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard", "track"),
    "trackio": ("trackio", "trackio", None),
    "wandb": ("wandb", "wandb", None),
    "mlflow": ("mlflow", "mlflow", None),
    "comet_ml": ("comet_ml", "comet-ml", None),
    "neptune": ("neptune", "neptune", None),
    "clearml": ("clearml", "clearml", None),
    "codecarbon": ("codecarbon", "codecarbon", None),
    "dagshub": ("dagshub", "dagshub", None),
    "dvclive": ("dvclive", "dvclive", None),
    "swanlab": ("swanlab", "swanlab", None),
    "azure_ml": ("azureml.core", "azureml-core", None),
    "flyte": ("flytekit", "flytekit", None),
    "kubeflow": ("kubeflow", "kubeflow", None),
}


def report_to_names(value: Any) -> list[str]:
    """The integrations a `report_to` value names (`none` and `all` name none that can be missing:
    `all` means the installed ones).

    >>> report_to_names("tensorboard"), report_to_names(["wandb", "none"]), report_to_names(None)
    (['tensorboard'], ['wandb'], [])
    """
    names = [value] if isinstance(value, str) else list(value or [])
    return [str(n) for n in names if n not in ("none", "all")]


def check_report_to(recipe: Recipe, path: str | Path | None = None) -> None:
    """`check_integrations` for the recipe's own trainer section (`recipes validate`)."""
    check_integrations(recipe.kind, getattr(recipe, recipe.kind).get("report_to"), path)


def check_integrations(section: str, report_to: Any, path: str | Path | None = None) -> None:
    """Import every tracking integration `report_to` names, as the trainer would after the model
    has loaded; a missing one is one InputError naming the package and how to install it.
    `recipes validate` and `training.trainer_config` (train, sft, their --dry-run) call it."""
    field = f"{section}.report_to"
    for name in report_to_names(report_to):
        if name not in INTEGRATIONS:
            raise InputError(f"unknown integration {name!r}; known: none, all, "
                             f"{', '.join(INTEGRATIONS)}", path=path, field=field)
        module, package, extra = INTEGRATIONS[name]
        how = f"pip install 'recone-lite[{extra}]'" if extra else f"pip install {package}"
        try:
            importlib.import_module(module)
        except ImportError:  # torch.utils.tensorboard raises a plain ImportError without it
            raise InputError(f"{name} needs the {package} package, which is not installed "
                             f"({how}; or set {field}=none)", path=path, field=field) from None
        except Exception as err:  # installed but broken (a version clash)
            raise InputError(f"{name}: importing {module} failed ({first_line(err)}); reinstall "
                             f"with {how}, or set {field}=none", path=path, field=field) from None


def _suggest(key: str, section: str) -> str:
    close = difflib.get_close_matches(key, sorted(trainer_fields(section)), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def recipes_dir() -> Path:
    """The recipes shipped with the package: `recone_lite.recipes` in a wheel (pyproject maps
    the top-level `recipes/` there); an editable install finds them in the source tree."""
    try:
        return Path(str(importlib.resources.files("recone_lite.recipes")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "recipes"


def packaged_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    """A packaged recipe name (`music-grpo`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError("is a folder, not a recipe file" if path.is_dir() else
                             "no such recipe file", path=path)
        return path
    recipes = packaged_recipes()
    if name_or_path not in recipes:
        close = difflib.get_close_matches(name_or_path, list(recipes), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(recipes)}"
        raise InputError(f"unknown recipe {name_or_path!r}{hint}")
    return recipes[name_or_path]


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists, and floats such as 1e-6 that YAML 1.1 misses.

    >>> parse_value("1e-6"), parse_value("8"), parse_value("true"), parse_value("[q_proj, v_proj]")
    (1e-06, 8, True, ['q_proj', 'v_proj'])
    >>> parse_value("runs/x")
    'runs/x'
    """
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides to a raw recipe dict (a copy is returned).

    >>> apply_overrides({"grpo": {"learning_rate": 2e-6}}, ["grpo.learning_rate=1e-5", "seed=3"])
    {'grpo': {'learning_rate': 1e-05}, 'seed': 3}
    >>> apply_overrides({}, ["seed"])
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: override 'seed': expected key.sub=value
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key.sub=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {item!r}: {part} is not a section")
        node[leaf] = parse_value(value)
    return raw


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (PyYAML keeps the last
    silently, so a repeated `grpo:` would drop a whole section)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:  # the keys as written (a `<<:` merge may repeat them)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_raw_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML of a recipe with its `extends:` chain merged in (child keys win)."""
    if path.resolve() in seen:
        raise InputError("recipe extends itself in a cycle", path=path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8 ({err.reason} at byte {err.start + 1})",
                         path=path) from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        raise InputError(f"invalid YAML ({getattr(err, 'problem', err)})", path=path,
                         line=None if line is None else line + 1) from None
    if not isinstance(raw, dict):
        raise InputError("a recipe is a YAML mapping", path=path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    sibling = path.parent / str(parent)
    parent_path = sibling if sibling.is_file() else resolve_recipe_path(str(parent))
    return _deep_merge(read_raw_recipe(parent_path, (*seen, path.resolve())), raw)


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Resolve, merge `extends`, apply overrides and validate; errors name the file and key."""
    path = resolve_recipe_path(name_or_path)
    raw = apply_overrides(read_raw_recipe(path), overrides or [])
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        key, message, count = validation_problem(err)
        more = f" (+{count - 1} more)" if count > 1 else ""
        named = key or message.split(":", 1)[0].split("[", 1)[0]  # a model validator names it
        given = _override_of(named, overrides or [])
        if given is not None:  # the command line set it, not the recipe file
            raise InputError(message + more, path=f"override {given!r}",
                             field=key or None) from None
        raise InputError(message + more, path=path, field=key or None) from None


def _override_of(key: str, overrides: list[str]) -> str | None:
    """The last override that set `key` (or a section holding it, or a key inside it).

    >>> _override_of("grpo.num_generations", ["seed=1", "grpo.num_generations=0"])
    'grpo.num_generations=0'
    >>> _override_of("grpo.num_generations", ["seed=1"]) is None
    True
    """
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if set_key and (key == set_key or key.startswith(set_key + ".")
                        or set_key.startswith(key + ".")):
            return item
    return None


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what `recipes show` prints and every run saves)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
