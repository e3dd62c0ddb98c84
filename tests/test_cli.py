"""The CLI as a shell user meets it: --help everywhere with examples, version, fast start-up."""

from __future__ import annotations

import subprocess
import sys

import typer.main
from typer.testing import CliRunner

from recone_lite.cli import app

runner = CliRunner()


def leaf_commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path; typer bundles its own click, so groups are known by `.commands`."""
    paths = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += leaf_commands(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


COMMANDS = leaf_commands(typer.main.get_command(app))


def test_every_command_has_help_with_an_example() -> None:
    assert len(COMMANDS) >= 4
    for path in COMMANDS:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.output, f"{' '.join(path)} --help shows no example"


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("version", "data", "recipes"):
        assert name in result.output


def test_command_lists_flow_their_sentences() -> None:
    """A command list shows each command's first docstring paragraph as flowing text: rich kept
    the docstring's hard line breaks there ("MAE with" and "failures" on two lines)."""
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "MAE with failures (an unparsable answer" in result.output
    assert "(from the installed recbole package)" in result.output


def test_predict_options_are_the_settings_fields() -> None:
    """`predict`'s options are declared once, as PredictSettings' fields: each field is an option
    (or the input argument) of the command, and the command passes one settings object on."""
    import dataclasses

    from recone_lite.predict_settings import PredictSettings

    command = typer.main.get_command(app).commands["predict"]
    names = {param.name for param in command.params}
    assert names == {field.name for field in dataclasses.fields(PredictSettings)}
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "250"})
    assert "--stats --no-stats" in " ".join(result.output.split())


def test_version_names_the_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recone_lite", "version"], capture_output=True, text=True, check=True
    )
    for name in ("recone-lite", "torch", "transformers", "trl", "peft", "cuda", "unsloth"):
        assert f"{name}: " in result.stdout


def test_importing_the_package_and_cli_loads_no_torch() -> None:
    code = "import sys, recone_lite.cli; print('torch' in sys.modules, 'trl' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False"


def test_unknown_option_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recone_lite", "recipes", "list", "--bogus"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "bogus" in result.stderr
