"""What a run folder or an export says about predicting with its model: the settings `predict`
takes as its defaults, so that a prediction builds the prompt training built and decodes as the
run's dev evaluation decoded.

One mapping from a recipe to these settings (`from_recipe`) serves all three places that need
it: `predict --adapter RUN` reads the run's recipe.yaml (`run_defaults`); `export` writes the
same settings into recone.json (`export_record`, under `"predict"`); `predict --model EXPORT`
reads them back (`export_defaults`). The prompt style is recorded whole, as
`dataclasses.asdict` of `prompts.PromptStyle`, and read back field by field, a missing field
taking PromptStyle's default (which is what an export written before that field existed
used), so a new PromptStyle field needs no change here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from recone_lite.config import DataSection, EvalSection, field_accepts
from recone_lite.models import ModelSpec, read_recone_json
from recone_lite.prepared import manifest_path
from recone_lite.prompts import STYLE_FIELDS, PromptStyle
from recone_lite.run_folder import RunFolder
from recone_lite.runs import RECIPE_YAML

SETTINGS = "predict"  # the key of recone.json that holds these settings


@dataclasses.dataclass
class RunDefaults:
    """What a run folder (`train` / `sft`) or an export says about predicting with its model;
    None where it says nothing. `sources` names the file each setting came from."""

    model: str | None = None
    gguf_file: str | None = None
    max_seq_length: int | None = None
    template: str | None = None
    max_prompt_tokens: int | None = None
    scale: tuple[float, float] | None = None
    readout: str | None = None
    max_new_tokens: int | None = None  # evaluation.max_new_tokens: the dev evaluation's length
    quantization: str | None = None  # model.quantization: the base the adapter trained on
    prompt: dict[str, Any] = dataclasses.field(default_factory=dict)  # PromptStyle's fields
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def source(self, name: str) -> str:
        return self.sources.get(name, "?")


def _section(mapping: dict[str, Any], name: str) -> dict[str, Any]:
    value = mapping.get(name)
    return value if isinstance(value, dict) else {}


def from_recipe(recipe: dict[str, Any], where: str) -> RunDefaults:
    """The settings a recipe (a run's recipe.yaml, as a dict) trained and evaluated with: base
    model, template, prompt budget and style (`data:`), readout and answer length
    (`evaluation:`), the base's quantization (`model:`); the scale is the run folder's
    (`run_defaults`). Malformed values are skipped (the command's own checks name them), never
    guessed.

    >>> found = from_recipe({"model": {"name": "m", "quantization": "4bit"}, "data": {
    ...     "template": "none", "system": "compact", "max_prompt_tokens": 300},
    ...     "evaluation": {"max_new_tokens": 96, "readout": "expected"}}, "r.yaml")
    >>> found.model, found.template, found.max_prompt_tokens, found.max_new_tokens
    ('m', 'none', 300, 96)
    >>> found.readout, found.quantization, found.prompt, found.source("prompt")
    ('expected', '4bit', {'system': 'compact'}, 'r.yaml')
    """
    found = RunDefaults()
    model, data = _section(recipe, "model"), _section(recipe, "data")
    evaluation = _section(recipe, "evaluation")
    if isinstance(model.get("name"), str) and model["name"]:
        found.model, found.sources["model"] = model["name"], where
        if isinstance(model.get("gguf_file"), str):
            found.gguf_file = model["gguf_file"]
        if field_accepts(ModelSpec, "max_seq_length", model.get("max_seq_length")):
            found.max_seq_length = model["max_seq_length"]
    if isinstance(model.get("quantization"), str):
        found.quantization, found.sources["quantization"] = model["quantization"], where
    if isinstance(data.get("template"), str):
        found.template, found.sources["template"] = data["template"], where
    if field_accepts(DataSection, "max_prompt_tokens", data.get("max_prompt_tokens")):
        found.max_prompt_tokens = data["max_prompt_tokens"]
        found.sources["max_prompt_tokens"] = where
    if isinstance(evaluation.get("readout"), str):
        found.readout, found.sources["readout"] = evaluation["readout"], where
    if field_accepts(EvalSection, "max_new_tokens", evaluation.get("max_new_tokens")):
        found.max_new_tokens = evaluation["max_new_tokens"]
        found.sources["max_new_tokens"] = where
    found.prompt = {key: data[key] for key in STYLE_FIELDS if data.get(key) is not None}
    if found.prompt:
        found.sources["prompt"] = where
    return found


def run_defaults(adapter: str | Path) -> RunDefaults:
    """What an adapter folder says: a run folder's recipe.yaml (`from_recipe`); else the
    recone.json of an `export --adapter-only` folder (`from_record`); the base from
    adapter_config.json when neither names it. A plain peft folder gives only the base."""
    folder = RunFolder(adapter)
    config = folder.adapter_config  # InputError for a missing folder or a non-adapter one
    if folder.recipe_path.is_file():
        found = from_recipe(folder.recipe, str(folder.recipe_path))
        found.scale = folder.scale  # the manifest of the data the run trained on
        if found.scale is not None:
            found.sources["scale"] = str(manifest_path(folder.data_dir))
    else:
        found = from_record(read_recone_json(folder.path), folder.path)
    if found.model is None and isinstance(config.get("base_model_name_or_path"), str):
        found.model = config["base_model_name_or_path"]
        found.sources["model"] = str(folder.path / "adapter_config.json")
    return found


def export_record(source_recipe: dict[str, Any], template: str | None,
                  scale: tuple[float, float] | None) -> dict[str, Any]:
    """recone.json's `"predict"` record: every prompt and decoding setting of the run, with the
    export's own template and scale (its `--template` / `--scale` or the run's). The prompt
    style is PromptStyle whole (defaults filled in), so a reader needs no recipe.

    >>> record = export_record({"data": {"template": "none", "stats": False,
    ...                          "max_prompt_tokens": 256}}, "none", (1.0, 5.0))
    >>> record["template"], record["max_prompt_tokens"], record["prompt"]["stats"]
    ('none', 256, False)
    >>> record["prompt"]["item_history"], record["readout"], record["max_new_tokens"]
    (5, None, None)
    """
    found = from_recipe(source_recipe, RECIPE_YAML)
    style = PromptStyle(**found.prompt)
    return {
        "template": template or found.template,
        "prompt": dataclasses.asdict(style),
        "max_prompt_tokens": found.max_prompt_tokens,
        "readout": found.readout,
        "max_new_tokens": found.max_new_tokens,
        "rating_scale": list(scale) if scale else None,
    }


def from_record(record: dict[str, Any], where: str | Path) -> RunDefaults:
    """The settings an export's recone.json records (`where`: its folder or file, for the log).
    An export older than the `"predict"` record gives its template and scale; a merged folder
    of that age also holds the run's recipe.yaml, which gives the rest."""
    found = RunDefaults()
    label = str(where)
    settings = record.get(SETTINGS)
    if not isinstance(settings, dict):
        folder = RunFolder(where)
        recipe = folder.recipe if folder.path.is_dir() else {}
        if recipe:
            found = from_recipe(recipe, str(folder.recipe_path))
            found.model = found.gguf_file = found.max_seq_length = found.quantization = None
            found.sources.pop("model", None)
        settings = {"template": record.get("template"), "rating_scale": record.get("rating_scale")}
    if isinstance(settings.get("template"), str):
        found.template, found.sources["template"] = settings["template"], label
    if field_accepts(DataSection, "max_prompt_tokens", settings.get("max_prompt_tokens")):
        found.max_prompt_tokens = settings["max_prompt_tokens"]
        found.sources["max_prompt_tokens"] = label
    if field_accepts(EvalSection, "max_new_tokens", settings.get("max_new_tokens")):
        found.max_new_tokens = settings["max_new_tokens"]
        found.sources["max_new_tokens"] = label
    if isinstance(settings.get("readout"), str):
        found.readout, found.sources["readout"] = settings["readout"], label
    scale = settings.get("rating_scale")
    if isinstance(scale, list) and len(scale) == 2:
        found.scale, found.sources["scale"] = (float(scale[0]), float(scale[1])), label
    prompt = settings.get("prompt")
    if isinstance(prompt, dict):
        found.prompt = {key: prompt[key] for key in STYLE_FIELDS if key in prompt}
        found.sources["prompt"] = label
    if record.get("kind") == "adapter" and isinstance(record.get("trained_quantization"), str):
        found.quantization = record["trained_quantization"]
        found.sources["quantization"] = label
    if record.get("kind") == "adapter" and isinstance(record.get("base_model"), str):
        found.model, found.sources["model"] = record["base_model"], label
    return found


def recone_json_path(model: str | Path, gguf_file: str | None = None) -> Path:
    """Where an export's recone.json lies: inside a merged or adapter folder; beside a GGUF
    file, named after it (`music.gguf` -> `music.recone.json`).

    >>> str(recone_json_path("out/music.gguf")), str(recone_json_path("out/m", "q.gguf"))
    ('out/music.recone.json', 'out/m/q.recone.json')
    >>> str(recone_json_path("out/music-merged"))
    'out/music-merged/recone.json'
    """
    path = Path(model).expanduser()
    if gguf_file:
        path = path / gguf_file
    if path.suffix == ".gguf":
        return path.with_suffix(".recone.json")
    return path / "recone.json"


def export_defaults(model: str | None, gguf_file: str | None = None) -> RunDefaults:
    """The settings recorded with an exported model (`predict --model EXPORT`); empty for a
    hub id or any model that no export wrote."""
    if model is None:
        return RunDefaults()
    path = recone_json_path(model, gguf_file)
    if not path.is_file():
        return RunDefaults()
    return from_record(read_recone_json(path), path.parent if path.name == "recone.json" else path)

