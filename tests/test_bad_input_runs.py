"""Nothing destroyed, nothing half-written: `--overwrite` replaces only a run (or a prepared data
folder), a failed start puts the old run back, a corrupt checkpoint or run.json is one line (or
skipped), temporary folders go away on SIGTERM/SIGINT and after a kill, and one writer at a time
holds an `--out`. Real files, real processes; the slow test trains the 2-layer fixture model."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
from data_helpers import amazon_2023
from training_helpers import main, prepare_run_dir, write_prepared, write_recipe

from recone_lite.errors import InputError, ReconeError
from recone_lite.files import writer_lock
from recone_lite.jsonl import write_jsonl
from recone_lite.runs import latest_checkpoint, open_run_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "tiny")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def hidden(folder: Path) -> list[str]:
    """Hidden names beside the outputs: temporary folders, moved-aside runs, lock files."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def fake_run(out: Path, status: str = "finished") -> dict[str, bytes]:
    """A run folder as `train` leaves it (no model needed to check the rules)."""
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (out / "recipe.yaml").write_text("a: 1\n")
    (out / "run.json").write_text(json.dumps({"status": status, "global_step": 2}))
    (out / "adapter_model.safetensors").write_bytes(b"weights of the old run")
    return snapshot(out)


def user_folder(folder: Path) -> dict[str, bytes]:
    """A folder of someone's own files (not a run, not prepared data)."""
    (folder / "src").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "src" / "main.py").write_text("print('mine')\n")
    return snapshot(folder)


def one_line(err: str, code: int, *parts: str, expected: int = 2) -> str:
    """The last stderr line is the one error line; no traceback; the exit code is `expected`."""
    assert code == expected, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: "), err
    for part in parts:
        assert part in lines[-1], (part, lines[-1])
    return lines[-1]


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recone_lite", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def holder(code: str, ready: Path) -> subprocess.Popen:
    """A python process that runs `code` (which touches `ready` when in place) and then waits."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, "the helper process ended early"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return process


# --- --overwrite replaces only a run -------------------------------------------------------------


def test_train_overwrite_refuses_a_folder_that_is_not_a_run(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mine = tmp_path / "mine"
    before = user_folder(mine)
    recipe = write_recipe(tmp_path / "r.yaml", prepared, tmp_path / "run")
    for flags in (["--overwrite"], [], ["--resume"]):
        code, out, err = main(capsys, "train", "--recipe", recipe, "--out", mine, *flags)
        line = one_line(err, code, str(mine), "holds no recone-lite run")
        assert out == "" and ("--overwrite replaces only a run folder" in line) == bool(
            flags == ["--overwrite"])
        assert snapshot(mine) == before and hidden(tmp_path) == []


def test_overwrite_never_takes_the_current_folder(prepared: Path, tmp_path: Path) -> None:
    """The `--out . --overwrite` that emptied a home directory: refused, nothing moved."""
    here = tmp_path / "home"
    before = user_folder(here)
    recipe = write_recipe(tmp_path / "r.yaml", prepared, tmp_path / "run")
    result = run("train", "--recipe", recipe, "--out", ".", "--overwrite", cwd=here)
    one_line(result.stderr, result.returncode, "holds no recone-lite run")
    result = run("data", "prepare", "--source", "amazon-2023", "--reviews",
                 amazon_2023(tmp_path / "reviews.jsonl", [("u", "i", 4.0, 1)]), "--out", ".",
                 "--overwrite", cwd=here)
    one_line(result.stderr, result.returncode, "is the current folder", "never replaced")
    assert snapshot(here) == before and hidden(here) == [] and hidden(tmp_path) == []
    run_here = tmp_path / "a-run"  # even a run folder is not moved away from under the shell
    old = fake_run(run_here)
    result = run("train", "--recipe", recipe, "--out", ".", "--overwrite", cwd=run_here)
    one_line(result.stderr, result.returncode, "is the current folder")
    assert snapshot(run_here) == old and hidden(tmp_path) == []


def test_sft_and_demo_overwrite_refuse_a_folder_that_is_not_a_run(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from recone_lite.prompts import build_messages

    rows = [json.loads(line) for line in (prepared / "coldstart.jsonl").read_text().splitlines()]
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({
        "id": e["id"], "rating": e["rating"], "kind": "template",
        "messages": [*build_messages(e, "none", (1.0, 5.0)),
                     {"role": "assistant", "content": f"<rate>{int(e['rating'])}</rate>"}]})
        + "\n" for e in rows))
    recipe = write_recipe(tmp_path / "sft.yaml", prepared, tmp_path / "run", kind="sft", grpo={},
                          sft={"max_steps": 1, "report_to": "none"})
    mine = tmp_path / "mine"
    before = user_folder(mine)
    code, _, err = main(capsys, "sft", "--recipe", recipe, "--traces", traces, "--out", mine,
                        "--overwrite")
    one_line(err, code, str(mine), "holds no recone-lite run")
    result = run("demo", "--data", prepared, "--out", mine, "--overwrite")
    one_line(result.stderr, result.returncode, str(mine), "holds no recone-lite run")
    assert snapshot(mine) == before and hidden(tmp_path) == []


def test_a_new_run_that_fails_to_start_puts_the_old_run_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = fake_run(out)
    with pytest.raises(RuntimeError, match="model did not load"):
        with open_run_dir(out, "a: 2\n", resume=False, overwrite=True) as start:
            assert (out / "recipe.yaml").read_text() == "a: 2\n" and start.checkpoint is None
            # the old run is aside, not deleted; run.json is the new run's placeholder
            assert json.loads((out / "run.json").read_text()) == {"status": "starting"}
            assert [n for n in hidden(tmp_path) if n.endswith(".replaced")]
            raise RuntimeError("model did not load")
    assert snapshot(out) == old and hidden(tmp_path) == []

    with open_run_dir(out, "a: 2\n", resume=False, overwrite=True) as start:
        start.started()  # model loaded, trainer built: the old run goes now
        assert hidden(tmp_path) == [".run.lock"]
    assert snapshot(out).keys() == {"recipe.yaml", "run.json"} and hidden(tmp_path) == []
    assert (out / "recipe.yaml").read_text() == "a: 2\n"

    fresh = tmp_path / "fresh"  # a first run that fails to start leaves nothing behind
    with pytest.raises(RuntimeError), open_run_dir(fresh, "a: 1\n", resume=False,
                                                   overwrite=False):
        raise RuntimeError("model did not load")
    assert not fresh.exists() and hidden(tmp_path) == []

    # killed during the warm-up (before it started): its scratch folder and adapter go too, so
    # the next train to the same --out, --overwrite or not, is not refused by what it left
    with pytest.raises(KeyboardInterrupt), open_run_dir(fresh, "a: 1\n", resume=False,
                                                        overwrite=False):
        (fresh / "warmup").mkdir()
        (fresh / "warmup" / "trainer_state.json").write_text("{}")
        (fresh / "warmup-adapter").mkdir()
        raise KeyboardInterrupt
    assert not fresh.exists() and hidden(tmp_path) == []


def test_cli_overwrite_with_a_model_that_does_not_load_keeps_the_old_run(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    old = fake_run(out)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"')  # cut short
    recipe = write_recipe(tmp_path / "r.yaml", prepared, out, broken)
    code, _, err = main(capsys, "train", "--recipe", recipe, "--overwrite")
    assert code in (1, 2) and "Traceback" not in err, err
    assert "holds the earlier run again" in err
    assert err.strip().splitlines()[-1].startswith("error: "), err
    assert snapshot(out) == old and hidden(tmp_path) == []


def overwriting_holder(out: Path, ready: Path) -> subprocess.Popen:
    """A process inside `open_run_dir(out, overwrite=True)` that has not started its run yet
    (the old run is aside), waiting to be signalled."""
    return holder(f"""
        import pathlib, time
        from recone_lite.runs import open_run_dir
        with open_run_dir(pathlib.Path({str(out)!r}), "a: 2\\n", resume=False, overwrite=True):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(120)
        """, ready)


def test_a_killed_overwrite_is_undone_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = fake_run(out)
    process = overwriting_holder(out, tmp_path / "ready")
    assert json.loads((out / "run.json").read_text())["status"] == "starting"  # not started
    process.send_signal(signal.SIGKILL)  # no cleanup runs: the old run waits aside
    process.wait()
    assert [n for n in hidden(tmp_path) if n.endswith(".replaced")]
    with pytest.raises(InputError, match="holds a finished run"):  # it is back, and finished
        prepare_run_dir(out, "a: 1\n", resume=False, overwrite=False)
    assert snapshot(out) == old and hidden(tmp_path) == []


def test_sigterm_during_a_failed_start_puts_the_old_run_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = fake_run(out)
    process = overwriting_holder(out, tmp_path / "ready")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert snapshot(out) == old and hidden(tmp_path) == []


# --- corrupt run.json and checkpoints ------------------------------------------------------------


@pytest.mark.parametrize(("text", "where"), [
    ('{"status": "running", "global_st', "run.json:1: malformed JSON"),
    ('["running"]', "run.json:1: expected a JSON object"),
])
def test_a_corrupt_run_json_is_one_line(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture, text: str, where: str
) -> None:
    out = tmp_path / "run"
    fake_run(out, "running")
    (out / "run.json").write_text(text)
    before = snapshot(out)
    recipe = write_recipe(tmp_path / "r.yaml", prepared, out)
    code, _, err = main(capsys, "train", "--recipe", recipe)
    one_line(err, code, where, "--resume continues from the newest complete checkpoint",
             "--overwrite starts the run again")
    assert snapshot(out) == before and hidden(tmp_path) == []
    # --resume goes on from the checkpoint's own state (issue 25): intact checkpoints are kept
    checkpoint, previous = prepare_run_dir(out, "a: 1\n", resume=True, overwrite=False)
    assert checkpoint == out / "checkpoint-2" and previous["global_step"] == 2
    assert "resume goes on from the newest checkpoint's own state" in capsys.readouterr().err
    assert snapshot(out) == before and hidden(tmp_path) == []


def test_a_moved_run_folder_resumes_where_it_is_now(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from recone_lite.config import dump_recipe
    from recone_lite.training import resolve_recipe

    first = tmp_path / "first"
    fake_run(first, "running")
    recipe_yaml = dump_recipe(resolve_recipe(str(write_recipe(tmp_path / "r.yaml", prepared,
                                                              first)), None, None, None))
    (first / "recipe.yaml").write_text(recipe_yaml)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    first.rename(moved)
    recipe = resolve_recipe(str(moved / "recipe.yaml"), None, None, None)
    assert recipe.output_dir == str(moved)  # its own folder, not the one it was trained in
    checkpoint, _ = prepare_run_dir(moved, dump_recipe(recipe), resume=True, overwrite=False)
    assert checkpoint == moved / "checkpoint-2"


def safetensors(path: Path, floats: int = 4) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [floats],
                               "data_offsets": [0, 4 * floats]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4 * floats))


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for n in (1, 2, 3, 4):
        folder = tmp_path / f"checkpoint-{n}"
        folder.mkdir()
        safetensors(folder / "adapter_model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": n}))
    cut = tmp_path / "checkpoint-3" / "adapter_model.safetensors"
    cut.write_bytes(cut.read_bytes()[:-5])  # the copy stopped early
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": ')
    (tmp_path / "checkpoint-5").mkdir()  # being written when the run died
    capsys.readouterr()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    err = capsys.readouterr().err
    assert f"skipping {tmp_path / 'checkpoint-5'}: incomplete" in err
    assert f"skipping {tmp_path / 'checkpoint-4'}: trainer_state.json is not valid JSON" in err
    assert f"skipping {tmp_path / 'checkpoint-3'}: adapter_model.safetensors is truncated" in err
    for n in (2, 1):
        (tmp_path / f"checkpoint-{n}" / "adapter_model.safetensors").write_bytes(b"\x01")
    assert latest_checkpoint(tmp_path, quiet=True) is None


# --- temporary folders and the writer lock -------------------------------------------------------


def big_reviews(path: Path) -> Path:
    """Enough reviews (44 MB) that `data prepare` is still writing when it is signalled."""
    return amazon_2023(path, [(f"u{i % 3000}", f"i{(i * 7) % 2000}", float(1 + i % 5), 1000 + i)
                              for i in range(200_000)])


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return big_reviews(tmp_path_factory.mktemp("raw") / "reviews.jsonl")


def prepare_command(reviews: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "recone_lite", "data", "prepare", "--source", "amazon-2023",
            "--reviews", str(reviews), "--out", str(out), "--k-core", "1", "--coldstart", "0"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_prepare_leaves_nothing(reviews: Path, tmp_path: Path, sig: int) -> None:
    # `sig` starts at its default action in the prepare, as a Ctrl-C or a `kill` from a terminal
    # finds it: pytest run as a script's background job (`&`) ignores SIGINT, and its children too.
    process = subprocess.Popen(prepare_command(reviews, tmp_path / "out"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=partial(signal.signal, sig, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*.tmp")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)  # held in its temporary phase, so `sig` comes before
    _, status = os.waitpid(process.pid, os.WUNTRACED)  # back once it is stopped (or ended)
    assert os.WIFSTOPPED(status), "the prepare ended before it was stopped"
    assert not (tmp_path / "out").exists(), "the prepare renamed its output before the stop"
    process.send_signal(sig)
    process.send_signal(signal.SIGCONT)
    code = process.wait(timeout=60)
    assert code != 0 and "Traceback" not in process.stderr.read().decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out, no temp folder, no lock


def test_two_prepares_to_one_out_do_not_both_succeed(reviews: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    processes = [subprocess.Popen(prepare_command(reviews, out), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results
    loser = next(err for code, err in results if code)
    assert ("another process" in loser or "already exists" in loser) and "Traceback" not in loser
    assert (out / "manifest.json").is_file() and hidden(tmp_path) == []


def test_a_held_out_is_refused_with_one_line(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    ready = tmp_path / "ready"
    process = holder(f"""
        import pathlib, time
        from recone_lite.files import writer_lock
        with writer_lock(pathlib.Path({str(out)!r})):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(120)
        """, ready)
    try:
        result = run("data", "prepare", "--source", "amazon-2023", "--reviews",
                     amazon_2023(tmp_path / "reviews.jsonl", [("u", "i", 4.0, 1)]),
                     "--out", out)
        one_line(result.stderr, result.returncode, f"pid {process.pid}", "is writing this --out",
                 expected=1)
        recipe = write_recipe(tmp_path / "r.yaml", prepared, out)
        code, _, err = main(capsys, "train", "--recipe", recipe)
        one_line(err, code, f"pid {process.pid}", expected=1)
        assert not out.exists()
    finally:
        process.kill()
        process.wait()
    with pytest.raises(ReconeError, match="another process"), writer_lock(out):
        prepare_run_dir(out, "a: 1\n", resume=False, overwrite=False)
    assert not out.exists() and hidden(tmp_path) == []


def test_temporary_folders_go_on_sigterm_and_after_a_kill(tmp_path: Path) -> None:
    final = tmp_path / "p.jsonl"
    code = f"""
        import pathlib, time
        from recone_lite.files import atomic_path
        with atomic_path(pathlib.Path({str(final)!r})) as tmp:
            tmp.write_text("half")
            pathlib.Path({str(tmp_path / "ready")!r}).touch()
            time.sleep(120)
        """
    process = holder(code, tmp_path / "ready")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert hidden(tmp_path) == [] and not final.exists()

    (tmp_path / "ready").unlink()
    killed = holder(code, tmp_path / "ready")
    killed.send_signal(signal.SIGKILL)  # no cleanup runs
    killed.wait()
    assert [n for n in hidden(tmp_path) if f".{killed.pid}." in n]
    write_jsonl(final, [{"a": 1}])  # the next write of the same name removes it
    assert hidden(tmp_path) == [] and final.read_text() == '{"a":1}\n'

    (tmp_path / "ready").unlink()
    alive = holder(code, tmp_path / "ready")  # a live writer of the same name
    try:
        write_jsonl(final, [{"a": 2}])
        assert [n for n in hidden(tmp_path) if f".{alive.pid}." in n]  # left alone
        assert final.read_text() == '{"a":2}\n'
    finally:
        alive.kill()
        alive.wait()


# --- the whole thing on a real (tiny) model -------------------------------------------------------


@pytest.mark.slow
def test_sigterm_then_resume_past_a_corrupt_checkpoint_then_overwrite(
    prepared: Path, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", prepared, out, tiny_dir,
                          grpo={"max_steps": 20}, evaluation={"at_start": False})
    process = subprocess.Popen(
        [sys.executable, "-m", "recone_lite", "train", "--recipe", str(recipe)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert hidden(tmp_path) == []  # the lock is released, no temporary files
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    complete = sorted((p for p in out.glob("checkpoint-*")
                       if (p / "trainer_state.json").is_file()),
                      key=lambda p: int(p.name.split("-")[1]))
    newest, before = complete[-1], complete[-2]
    adapter = newest / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    code, _, err = main(capsys, "train", "--recipe", recipe, "--resume")
    assert code == 0, err
    assert f"skipping {newest}: adapter_model.safetensors is truncated" in err
    assert f"resuming from {before}" in err
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "finished" and run_json["global_step"] == 20

    code, _, err = main(capsys, "train", "--recipe", recipe, "grpo.max_steps=1", "--overwrite")
    assert code == 0, err
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "finished" and run_json["global_step"] == 1
    assert not list(out.glob("checkpoint-2*")) and hidden(tmp_path) == []


def test_tensorboard_logs_stay_inside_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from recone_lite.training import trainer_config

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "elsewhere"))
    # "all": whatever is installed, TensorBoard included (and no dependency for this test)
    trainer_config("sft", {"report_to": "all", "max_steps": 1}, tmp_path / "run", 0)
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "run" / "runs")
