"""A run folder read in one place: what `train` / `sft` left in it (runs.py lists the layout),
as `predict --adapter RUN`, `export`, `report`, the demo and `train --recipe RUN/recipe.yaml
--resume` need it.

`RunFolder(path)` reads each file once, when it is first asked for, so a command that needs
only the adapter's base never trips over a corrupt run.json, and a file's error is raised by
the command that reads it, in the order that command reads them:

- `home`: the folder whose recipe.yaml and run.json describe the adapter: the folder itself, or,
  for an adapter a run keeps inside itself (`checkpoint-N/`, `warmup-adapter/`) with no
  recipe.yaml of its own, the run around it (the same prompt trained both).
- `recipe`: recipe.yaml as a mapping ({} when absent or not a mapping; InputError when it is not
  YAML). It is the run's fully resolved recipe; it is read leniently, section by section
  (`section`) and field by field against the recipe schema's own checks
  (`config.field_accepts`, in run_settings.from_recipe), not validated as a whole `Recipe`: a
  run trained by an older recone-lite holds keys a newer `Recipe` rejects, and validating
  `grpo:` / `sft:` imports TRL, which `predict` and `export` do not need (and which must not be
  imported before Unsloth on a GPU).
- `run`: run.json ({} when absent; InputError when corrupt).
- `adapter_config`: adapter_config.json (InputError for a missing folder or a non-adapter one).
- `base`, `data_dir`, `scale`: the base model the recipe (else the adapter config) names, the
  prepared folder the recipe trained on, and that folder's rating scale.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from recone_lite.errors import InputError
from recone_lite.models import adapter_config
from recone_lite.prepared import is_prepared, read_scale
from recone_lite.runs import RECIPE_YAML, inner_adapter, is_run_dir, read_run_json


def read_recipe_yaml(path: Path) -> dict[str, Any]:
    """A run's recipe.yaml as a mapping ({} when absent or not a mapping); InputError (one line)
    when it is not YAML or not UTF-8.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "recipe.yaml"
    >>> read_recipe_yaml(path)
    {}
    >>> _ = path.write_text("model: {name: m}\\n")
    >>> read_recipe_yaml(path)
    {'model': {'name': 'm'}}
    >>> _ = path.write_text("model: [\\n")
    >>> read_recipe_yaml(path)
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: ...recipe.yaml: malformed YAML (ParserError)
    """
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"malformed YAML ({type(err).__name__})", path=path) from None
    return loaded if isinstance(loaded, dict) else {}


def _describes(folder: Path) -> bool:
    """Whether `folder` holds a run's description (run.json or recipe.yaml): where an inner
    adapter's prompt is read from, which only reads."""
    return is_run_dir(folder) or (folder / RECIPE_YAML).is_file()


class RunFolder:
    """One run folder (or any adapter folder: an `export --adapter-only` folder, a plain peft
    folder), each of its files read once, when first asked for.

    >>> import tempfile
    >>> folder = RunFolder(tempfile.mkdtemp())
    >>> _ = folder.recipe_path.write_text("model: {name: m}\\ndata: {dir: nowhere}\\n")
    >>> folder.is_run, folder.base, folder.section("data"), folder.section("lora")
    (False, 'm', {'dir': 'nowhere'}, {})
    >>> _ = (folder.path / "run.json").write_text("{}")  # only run.json makes it a run
    >>> folder.is_run
    True
    >>> folder.run, folder.data_dir, folder.scale
    ({}, None, None)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    @functools.cached_property
    def home(self) -> Path:
        """This folder, or the run around it for a checkpoint or warm-up adapter without its
        own recipe.yaml.

        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = (run / "recipe.yaml").write_text("model: {name: m}\\n")
        >>> (run / "checkpoint-8").mkdir()
        >>> RunFolder(run / "checkpoint-8").home == run, RunFolder(run / "checkpoint-8").base
        (True, 'm')
        >>> RunFolder(run / "checkpoint-8").is_run  # what --overwrite may replace: only the run
        False
        """
        if (not _describes(self.path) and inner_adapter(self.path)
                and _describes(self.path.parent)):
            return self.path.parent
        return self.path

    @property
    def recipe_path(self) -> Path:
        return self.home / RECIPE_YAML

    @property
    def is_run(self) -> bool:
        """Whether the folder holds a recone-lite run: its run.json (`runs.is_run_dir`; a
        recipe.yaml alone may be anyone's)."""
        return is_run_dir(self.path)

    @functools.cached_property
    def recipe(self) -> dict[str, Any]:
        return read_recipe_yaml(self.recipe_path)

    @functools.cached_property
    def run(self) -> dict[str, Any]:
        return read_run_json(self.home)

    @functools.cached_property
    def adapter_config(self) -> dict[str, Any]:
        return adapter_config(self.path)

    def section(self, name: str) -> dict[str, Any]:
        """One section of the recipe ({} when absent or not a mapping)."""
        value = self.recipe.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def base(self) -> str | None:
        """The base model: the recipe's `model.name`, else adapter_config.json's
        `base_model_name_or_path` (read only when the recipe names none)."""
        name = self.section("model").get("name")
        if isinstance(name, str) and name:
            return name
        recorded = self.adapter_config.get("base_model_name_or_path")
        return recorded if isinstance(recorded, str) and recorded else None

    @property
    def data_dir(self) -> Path | None:
        """The prepared folder the recipe trained on, when it is still there."""
        found = self.section("data").get("dir")
        return Path(found) if isinstance(found, str) and Path(found).is_dir() else None

    @property
    def scale(self) -> tuple[float, float] | None:
        """The rating scale of `data_dir` (its manifest.json), or None."""
        data = self.data_dir
        return read_scale(data) if data is not None and is_prepared(data) else None
