"""What a user owns in or beside a run folder survives `train` and `sft`: only run.json marks a
run folder (a recipe.yaml alone is anyone's), `--overwrite` and `--resume` never run in a folder
holding one of the command's inputs, `--overwrite` refuses a folder holding an entry no run writes
and a symlinked --out, a killed fresh run is still resumed or replaced. Real files, real CLI
processes; every refusal here comes before a model loads (most before the data is read), so no
test trains. (`launch` checks its jobs' folders the same way: test_launch.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input_runs import fake_run, hidden, holder, one_line, snapshot
from training_helpers import prepare_run_dir, write_prepared, write_recipe

from recone_lite.errors import InputError
from recone_lite.files import foreign_entry
from recone_lite.runs import RUN_ENTRIES, check_run_out, open_run_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "tiny")


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def refused(result: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit 2 with one error line holding `parts`, nothing on stdout."""
    assert result.stdout == "", result.stdout
    return one_line(result.stderr, result.returncode, *parts)


def traces_of(prepared: Path, path: Path) -> Path:
    from recone_lite.prompts import build_messages

    rows = [json.loads(x) for x in (prepared / "coldstart.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({
        "id": e["id"], "rating": e["rating"], "kind": "template",
        "messages": [*build_messages(e, "none", (1.0, 5.0)),
                     {"role": "assistant", "content": f"<rate>{int(e['rating'])}</rate>"}]})
        + "\n" for e in rows))
    return path


def experiment(folder: Path, prepared: Path) -> dict[str, bytes]:
    """Someone's experiment folder: their recipe.yaml (no run.json: no run was ever there), notes,
    a copy of the data, traces and the paid teacher replies cached beside them."""
    folder.mkdir(parents=True)
    write_recipe(folder / "recipe.yaml", folder / "data", folder.parent / "elsewhere")
    (folder / "notes.md").write_text("what I tried\n")
    put_inputs(folder, prepared)
    return snapshot(folder)


def put_inputs(folder: Path, prepared: Path) -> None:
    """A copy of the data, traces and the paid teacher replies cached beside them."""
    write_prepared(folder / "data")
    traces_of(prepared, folder / "traces.jsonl")
    (folder / "traces.jsonl.cache").mkdir()
    (folder / "traces.jsonl.cache" / "0a1b.json").write_text('{"reply": "paid for"}')


# --- (a) + (b): a recipe.yaml is no run ----------------------------------------------------------


def test_a_folder_with_a_users_recipe_yaml_is_never_replaced_or_resumed(
    prepared: Path, tmp_path: Path
) -> None:
    """The audit's case: `train --recipe DIR/recipe.yaml --overwrite` trained into DIR (a
    recipe.yaml made it "a run") and removed the notes, data, traces and cache once the model
    loaded; `sft --traces DIR/traces.jsonl --out DIR --overwrite` too; --resume rewrote the
    recipe.yaml."""
    from recone_lite.training import resolve_recipe

    mine = tmp_path / "exp"
    before = experiment(mine, prepared)
    # (b) no run.json beside it: the recipe's own output_dir, not DIR
    recipe = resolve_recipe(str(mine / "recipe.yaml"), None, None, None)
    assert recipe.output_dir == str(tmp_path / "elsewhere")
    sft = write_recipe(tmp_path / "sft.yaml", prepared, tmp_path / "elsewhere", kind="sft",
                       grpo={}, sft={"max_steps": 1, "report_to": "none"})
    for flags in (["--overwrite"], ["--resume"], []):
        result = cli("sft", "--recipe", sft, "--traces", mine / "traces.jsonl", "--out", mine,
                     *flags)
        refused(result, str(mine), "holds no recone-lite run (no run.json)")
        result = cli("train", "--recipe", mine / "recipe.yaml", "--out", mine, *flags)
        refused(result, str(mine), "holds no recone-lite run")
        assert snapshot(mine) == before and hidden(tmp_path) == []
    assert not (tmp_path / "elsewhere").exists()


def test_a_runs_own_recipe_yaml_still_trains_into_its_run(prepared: Path, tmp_path: Path) -> None:
    from recone_lite.training import resolve_recipe

    run = tmp_path / "moved-run"
    fake_run(run, "running")
    write_recipe(run / "recipe.yaml", prepared, tmp_path / "where-it-was-trained")
    assert resolve_recipe(str(run / "recipe.yaml"), None, None, None).output_dir == str(run)


def test_a_killed_fresh_run_is_a_run_folder_that_resume_and_overwrite_take(
    tmp_path: Path,
) -> None:
    """run.json comes first: a fresh run killed outright before its model loaded (no cleanup)
    leaves a folder marked as a run, which the next run continues or replaces, never refuses as
    someone's folder."""
    out = tmp_path / "run"
    code = f"""
        import pathlib, time
        from recone_lite.runs import open_run_dir
        with open_run_dir(pathlib.Path({str(out)!r}), "a: 1\\n", resume=False, overwrite=False):
            (pathlib.Path({str(out)!r}) / "warmup").mkdir()  # the warm-up's scratch folder
            pathlib.Path({str(tmp_path / "ready")!r}).touch()
            time.sleep(120)
        """
    killed = holder(code, tmp_path / "ready")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert json.loads((out / "run.json").read_text()) == {"status": "starting"}
    with pytest.raises(InputError, match="holds an unfinished run; pass --resume"):
        prepare_run_dir(out, "a: 1\n", resume=False, overwrite=False)
    checkpoint, previous = prepare_run_dir(out, "a: 1\n", resume=True, overwrite=False)
    assert checkpoint is None and previous == {}  # a placeholder is no earlier record
    assert prepare_run_dir(out, "a: 2\n", resume=False, overwrite=True) == (None, {})
    assert (out / "recipe.yaml").read_text() == "a: 2\n" and not (out / "warmup").exists()
    assert hidden(tmp_path) == []


def test_a_resume_that_fails_to_start_puts_the_recipe_yaml_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    fake_run(out, "running")
    shutil.rmtree(out / "checkpoint-2")  # no checkpoint yet: the recipe is not compared
    before = snapshot(out)
    with pytest.raises(RuntimeError), open_run_dir(out, "a: 2\n", resume=True, overwrite=False):
        assert (out / "recipe.yaml").read_text() == "a: 2\n"
        raise RuntimeError("model did not load")
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_an_empty_out_given_stays_when_the_run_fails_to_start(tmp_path: Path) -> None:
    out = tmp_path / "made-by-me"
    out.mkdir()
    with pytest.raises(RuntimeError), open_run_dir(out, "a: 1\n", resume=False, overwrite=False):
        assert (out / "run.json").is_file() and (out / "recipe.yaml").is_file()
        raise RuntimeError("model did not load")
    assert out.is_dir() and list(out.iterdir()) == [] and hidden(tmp_path) == []


# --- (c): an input inside --out ------------------------------------------------------------------


def run_with_inputs(run: Path, prepared: Path) -> dict[str, bytes]:
    """A finished run folder into which someone put the data, traces and cache it used."""
    fake_run(run)
    put_inputs(run, prepared)
    return snapshot(run)


def test_overwrite_and_resume_refuse_a_run_folder_holding_an_input(
    prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    before = run_with_inputs(run, prepared)
    sft = write_recipe(tmp_path / "sft.yaml", prepared, run, kind="sft", grpo={},
                       sft={"max_steps": 1, "report_to": "none"})
    for flag in ("--overwrite", "--resume"):
        result = cli("sft", "--recipe", sft, "--traces", run / "traces.jsonl", "--out", run, flag)
        refused(result, f"{run / 'traces.jsonl'}: --traces: lies inside --out {run}",
                "move it out or choose another --out")
        result = cli("train", "--recipe", write_recipe(tmp_path / "g.yaml", run / "data", run),
                     flag)
        refused(result, f"{run / 'data'}: data.dir: lies inside --out {run}")
        result = cli("train", "--recipe", write_recipe(tmp_path / "g2.yaml", prepared, run),
                     "--init-adapter", run / "checkpoint-2", flag)
        refused(result, "init_adapter: lies inside")
        assert snapshot(run) == before and hidden(tmp_path) == []
    own = write_recipe(run / "recipe.yaml", prepared, run)  # the run's own recipe file
    before = snapshot(run)
    result = cli("train", "--recipe", own, "--overwrite")
    refused(result, f"{own}: --recipe: lies inside --out {run}", "--overwrite replaces")
    assert snapshot(run) == before and hidden(tmp_path) == []


def test_resume_may_read_the_runs_own_recipe_yaml(prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fake_run(run, "running")
    own = write_recipe(run / "recipe.yaml", prepared, run)
    inputs = {"--recipe": own, "data.dir": prepared}
    check_run_out(run, resume=True, overwrite=False, inputs=inputs)
    (run / "other.yaml").write_bytes(own.read_bytes())  # any other recipe file inside: refused
    with pytest.raises(InputError, match="--recipe: lies inside"):
        check_run_out(run, resume=True, overwrite=False, inputs={"--recipe": run / "other.yaml"})


# --- (d): entries no run writes ------------------------------------------------------------------


def test_overwrite_refuses_a_run_folder_holding_a_users_file(
    prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    fake_run(run)
    (run / "my-notes.txt").write_text("mine")
    before = snapshot(run)
    result = cli("train", "--recipe", write_recipe(tmp_path / "r.yaml", prepared, run),
                 "--overwrite")
    refused(result, str(run), "holds my-notes.txt, which no recone-lite run writes",
            "move it out of", "or choose another --out")
    assert snapshot(run) == before and hidden(tmp_path) == []


def test_everything_a_run_report_and_demo_write_is_replaced(tmp_path: Path) -> None:
    """The names of real run folders (a GRPO run with a warm-up, report and demo files, the
    TensorBoard folder, an atomic write's leftover) are all a run's own: --overwrite goes on,
    and the old run is gone once the new one has started."""
    run = tmp_path / "run"
    fake_run(run)
    for name in ("README.md", "adapter_config.json", "chat_template.jinja", "dev-step0.jsonl",
                 "dev-step8.jsonl", "log.jsonl", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "training_args.bin", "test-eval.json",
                 "test-predictions.jsonl", "test-sample.jsonl", ".run.json.4242.x1y2.tmp"):
        (run / name).write_text("x")
    for name in ("checkpoint-8", "warmup-adapter", "warmup", "report", "runs", "completions"):
        (run / name).mkdir()
        (run / name / "inside.bin").write_text("x")
    assert foreign_entry(run, RUN_ENTRIES) is None
    with open_run_dir(run, "a: 2\n", resume=False, overwrite=True) as start:
        start.started()
    assert sorted(p.name for p in run.iterdir()) == ["recipe.yaml", "run.json"]
    assert hidden(tmp_path) == []
    assert "notes.txt" not in RUN_ENTRIES


# --- a symlinked --out ---------------------------------------------------------------------------


def test_overwrite_refuses_a_symlinked_out_before_reading_anything(tmp_path: Path) -> None:
    real = tmp_path / "real"
    before = fake_run(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    # data.dir does not exist: the refusal comes before the data (or a model) is read
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "no-data", link)
    result = cli("train", "--recipe", recipe, "--overwrite")
    refused(result, f"{link}: is a symbolic link", "--overwrite")
    assert snapshot(real) == before and link.is_symlink() and hidden(tmp_path) == []


def test_a_symlink_moved_aside_by_an_older_overwrite_is_put_back_or_left(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before the fix, `--overwrite` of a symlinked --out moved the link aside; the next run
    crashed removing it. It is now put back (its replacement never started) or left alone."""
    real = tmp_path / "real"
    before = fake_run(real)
    link, aside = tmp_path / "link", tmp_path / ".link.4242.replaced"
    aside.symlink_to(real)
    link.mkdir()
    (link / "recipe.yaml").write_text("a: 2\n")  # all the killed replacement wrote
    with pytest.raises(InputError, match="is a symbolic link"):
        prepare_run_dir(link, "a: 2\n", resume=False, overwrite=True)
    assert link.is_symlink() and not aside.is_symlink() and snapshot(real) == before
    link.unlink()
    aside.symlink_to(real)
    fake_run(link, "running")  # a replacement that had started: the link is not followed
    capsys.readouterr()
    with pytest.raises(InputError, match="unfinished run"):
        prepare_run_dir(link, "a: 2\n", resume=False, overwrite=False)
    assert "left for you" in capsys.readouterr().err
    assert aside.is_symlink() and snapshot(real) == before


def test_check_run_out_writes_nothing(tmp_path: Path) -> None:
    for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True},
                  {"resume": False, "overwrite": False}):
        check_run_out(tmp_path / "new", **flags)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="contradict"):
        check_run_out(tmp_path, resume=True, overwrite=True)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="exists and is not a directory"):
        check_run_out(tmp_path / "pipe", resume=False, overwrite=True)
