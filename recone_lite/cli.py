"""The `recone-lite` command line: one thin function per command, no logic of its own.

Heavy imports (torch, transformers, trl) happen inside the commands, so `--help` stays fast.
Data goes to stdout, logs and progress to stderr. Exit codes: 0 ok, 1 runtime failure, 2 bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from recone_lite.errors import ReconeError

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
    from recone_lite.versions import stack_versions

    for name, value in stack_versions().items():
        typer.echo(f"{name}: {value}")


# --- data commands (data prepare / data stats / data show) -------------------------------------


# --- recipes commands --------------------------------------------------------------------------


Overrides = Annotated[
    Optional[list[str]], typer.Argument(help="key.sub=value overrides, e.g. grpo.learning_rate=1e-5")
]


@recipes_app.command("list")
def recipes_list() -> None:
    """List the packaged recipes with their one-line descriptions.

    Example: [bold]recone-lite recipes list[/bold]
    """
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
    from recone_lite.config import dump_recipe, load_recipe

    typer.echo(dump_recipe(load_recipe(name, overrides)), nl=False)


@recipes_app.command("validate")
def recipes_validate(
    paths: Annotated[list[str], typer.Argument(help="recipe files or names to check")],
) -> None:
    """Check recipes without running them; exit 2 naming the file and key of the first error.

    Examples:
      [bold]recone-lite recipes validate my-recipe.yaml[/bold]
      [bold]recone-lite recipes validate recipes/*.yaml[/bold]
    """
    from recone_lite.config import load_recipe

    for path in paths:
        load_recipe(path)
        typer.echo(f"ok\t{path}", err=True)


# --- core commands (baselines / eval) ----------------------------------------------------------


# --- model commands (predict) ------------------------------------------------------------------


# --- training commands (train / sft / traces) --------------------------------------------------


# --- serving commands (export) -----------------------------------------------------------------


def main() -> None:
    """Console entry point: run the app, turning ReconeError into a one-line message and exit code."""
    try:
        app(standalone_mode=False)
    except ReconeError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except BrokenPipeError:
        # A reader such as `head -n 3` closed the pipe early: that is not an error.
        sys.stderr.close()
        sys.exit(0)
    except Exception as err:  # click usage errors carry their own exit code (2)
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
