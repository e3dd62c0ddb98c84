"""`recone-lite predict`'s options, each declared once: its name, type, default and help text.

`PredictSettings` is what the command line (cli.py builds the `predict` command's options from
its fields), a library caller (`predict.predict(input, **fields)`), the demo and the benches
(`PredictSettings.from_recipe`) hand to `predict.predict`. A field left at None is "not given":
`predict.resolve` fills it in layers, the option first, then what the `--adapter` run folder
records, then an exported `--model`'s recone.json, then the default (run_settings.py reads the
last two). The model for this is LitGPT's `TrainArgs` / `EvalArgs`: one options object that
every entry point shares.

Standard library (and prompts.py) only: cli.py imports it at start-up, and `--help` must stay
fast.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recone_lite.prompts import STYLE_FIELDS

MAX_INT = 2**31 - 1  # integer options: a 20-digit value is a usage error, not an overflow


def _option(default: Any, help: str, *, flags: tuple[str, ...] = (), min: int | float | None = None,
            max: int | None = None, show_default: bool = True, argument: bool = False) -> Any:
    """A field with what the command line shows of it (cli.py turns it into a typer option)."""
    meta = {"help": help, "flags": flags, "min": min, "max": max, "show_default": show_default,
            "argument": argument}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class PredictSettings:
    """Every option of `predict`, in the order `predict --help` lists them.

    >>> PredictSettings(model="m").prompt()
    {}
    >>> set(STYLE_FIELDS) <= {field.name for field in dataclasses.fields(PredictSettings)}
    True
    >>> PredictSettings(stats=False, cf="mf").prompt()
    {'stats': False, 'cf': 'mf'}
    """

    model: str | None = _option(
        None, "hub id, model folder or .gguf file; with --backend openai, the served model or "
        "adapter name [default: the base model recorded in the --adapter run folder]",
        show_default=False)
    input: str = _option(
        "-", "requests JSONL (prepared examples or bare {id, history, target}); - reads stdin",
        argument=True)
    gguf_file: str | None = _option(None, "GGUF file inside the --model folder")
    adapter: str | None = _option(
        None, "LoRA adapter folder (peft); a `train` / `sft` run folder (or an adapter-only "
        "export) also gives the defaults of --model, --template, the prompt options, "
        "--max-prompt-tokens, --max-new-tokens, --scale, --readout and --quantization; with "
        "--backend openai it only gives those settings and its base's tokenizer")
    template: str | None = _option(
        None, "prompt: reczero, think or none (default: the adapter run's data.template, else an "
        "exported model's recone.json, else reczero)")
    scale: str | None = _option(
        None, "rating scale MIN,MAX (default: the input's manifest.json, else the adapter run's "
        "data, else an exported model's recone.json, else 1,5)")
    max_prompt_tokens: int | None = _option(
        None, "prompt budget, oldest history dropped first (default: the adapter run's "
        "data.max_prompt_tokens, else an exported model's recone.json, else max length - max "
        "new tokens)", min=1)
    batch_size: int | None = _option(
        None, "requests per generation batch (default 8; vllm 256)", min=1, max=MAX_INT)
    max_new_tokens: int | None = _option(
        None, "tokens per completion (default: the adapter run's evaluation.max_new_tokens, else "
        "an exported model's recone.json, else 512)", min=1, max=MAX_INT)
    temperature: float = _option(0.0, "0 is greedy", min=0.0)
    samples: int = _option(1, "k completions per request; rating = mean of parsable ones",
                           min=1, max=MAX_INT)
    seed: int | None = _option(None, "random seed for sampling")
    out: str | None = _option(None, "write here instead of stdout")
    resume: bool = _option(False, "skip the ids already in --out, append the rest")
    completion: bool = _option(True, "include the completion text")
    skip_bad: bool = _option(False, "count and skip malformed lines")
    backend: str = _option("hf", "hf (local), openai (a server) or vllm")
    base_url: str | None = _option(
        None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = _option(
        "OPENAI_API_KEY", "environment variable holding the API key (never printed)")
    concurrency: int = _option(8, "requests in flight (openai)", min=1, max=MAX_INT)
    dtype: str = _option("auto", "auto, float32, bfloat16 or float16")
    quantization: str | None = _option(
        None, "none, 4bit or 8bit (CUDA only; default: the adapter run's model.quantization, "
        "else none)")
    trust_remote_code: bool = _option(
        False, "run the model repository's own code (only models you trust)")
    readout: str | None = _option(
        None, "text: the number written in <rate>; expected: the mean of the model's "
        "distribution over the rating tokens after <rate> (hf: from the logits; openai, vllm: "
        "from the top-20 logprobs; default: the adapter run's evaluation.readout, else text)")
    item_history: int | None = _option(
        None, "show the target's newest N earlier ratings by other users (default: the adapter "
        "run's data.item_history, else 5; 0: none)", min=0)
    stats: bool | None = _option(
        None, "show the rating-statistics line (default: the adapter run's data.stats, else "
        "shown)", flags=("--stats/--no-stats",))
    system: str | None = _option(
        None, "system prompt: full or compact (default: the adapter run's data.system, else "
        "full)")
    max_history: int | None = _option(
        None, "show at most the newest N history items (default: the adapter run's "
        "data.max_history, else all that fit)", min=1)
    cf: str | None = _option(
        None, "show these collaborative predictions of the request's `cf` object, a comma list "
        "of biases, mf, knn ('' for none; default: the adapter run's data.cf, else none)")

    def prompt(self) -> dict[str, Any]:
        """The prompt-style options given (prompts.PromptStyle's fields), by name."""
        return {key: getattr(self, key) for key in STYLE_FIELDS if getattr(self, key) is not None}

    @classmethod
    def from_recipe(cls, recipe: Any, **given: Any) -> PredictSettings:
        """The settings that predict as a loaded recipe's own dev evaluation does
        (`recipe_options`); `given` sets the rest (the adapter, the output, ...).

        >>> from types import SimpleNamespace as NS
        >>> recipe = NS(model=NS(name="m", gguf_file=None), evaluation=NS(
        ...     batch_size=4, max_new_tokens=96), data=NS(template="none", max_prompt_tokens=300,
        ...     item_history=5, stats=True, system="compact", max_history=None, cf=["mf"]))
        >>> settings = PredictSettings.from_recipe(recipe, out="p.jsonl")
        >>> settings.model, settings.max_new_tokens, settings.cf, settings.out
        ('m', 96, 'mf', 'p.jsonl')
        """
        return cls(**{**recipe_options(recipe), **given})


def recipe_options(recipe: Any) -> dict[str, Any]:
    """`predict`'s options for a loaded recipe: its model, template, prompt budget and style
    (`data:`), batch size and answer length (`evaluation:`), what a bench passes so that it
    predicts as the recipe's own dev evaluation does (the readout is left to the run folder or
    the caller). `run_settings.run_defaults` reads the same from a run folder.

    >>> from recone_lite.config import load_recipe
    >>> options = recipe_options(load_recipe("cpu-quality"))
    >>> options["model"], options["max_new_tokens"], options["max_history"]
    ('smollm2-135m-gguf', 10, 1)
    """
    section = recipe.data
    return {"model": recipe.model.name, "gguf_file": recipe.model.gguf_file,
            "template": section.template, "max_prompt_tokens": section.max_prompt_tokens,
            "batch_size": recipe.evaluation.batch_size,
            "max_new_tokens": recipe.evaluation.max_new_tokens,
            **{key: getattr(section, key) for key in STYLE_FIELDS if key != "cf"},
            "cf": ",".join(getattr(section, "cf", None) or ())}
