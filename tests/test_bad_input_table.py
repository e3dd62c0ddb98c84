"""Issue 25: bad inputs walked through the real command line, one table row per case.

Each row is a command (run in this process through the console entry point, so the heavy
imports are paid once), the exit code it must end with, words its one `error:` line must hold,
and the folder it runs in. Every case runs in a fresh copy of one small world (prepared data,
a folder of someone else's files, a finished run, an export, requests) and every file and folder
of that world must be byte-identical afterwards. No case loads a model: each check comes first.
A new case is one line in CASES.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
from training_helpers import main, write_prepared, write_template_traces


class Case(NamedTuple):
    name: str
    args: str  # split on spaces; {w} is the world's root
    code: int
    words: tuple[str, ...]
    cwd: str = "."  # relative to the world's root
    usage: bool = False  # a usage error click reports (its box, not our `error:` line)


OPENAI = "predict --backend openai --base-url http://127.0.0.1:9/v1 --model m"  # never reached
TRACES = "traces make --teacher template --data"  # offline: no server needed

CASES = [
    # --- item 1: one guarded way to write a user's path -----------------------------------------
    Case("traces-out-onto-a-folder", TRACES + " {w}/data --out {w}/victim", 2,
         ("victim", "--out", "is a folder")),
    Case("traces-out-dot", TRACES + " {w}/data --out .", 2,
         ("--out", "current folder")),
    Case("traces-out-onto-the-folder-it-runs-in", TRACES + " ../data --out ../inner", 2,
         ("--out", "current folder"), "inner"),
    Case("traces-dropped-file-onto-a-folder",
         TRACES + " {w}/data --out {w}/inner/t.jsonl", 2,
         ("t.dropped.jsonl", "is a folder")),
    Case("traces-out-onto-its-own-input", TRACES + " {w}/data --out {w}/data/train.jsonl", 2,
         ("train.jsonl", "--out", "prepared folder")),
    Case("prepare-overwrite-someone-elses-folder",
         "data prepare --source amazon-2023 --reviews {w}/reviews.jsonl --out {w}/victim "
         "--overwrite", 2, ("victim", "no manifest.json")),
    Case("prepare-overwrite-dot-in-an-empty-folder",
         "data prepare --source amazon-2023 --reviews ../reviews.jsonl --out . --overwrite", 2,
         ("--out", "current folder"), "empty"),
    Case("prepare-overwrite-the-folder-it-runs-in",
         "data prepare --source amazon-2023 --reviews ../reviews.jsonl --out ../inner "
         "--overwrite", 2, ("--out", "current folder"), "inner"),
    Case("export-adapter-only-onto-someone-elses-folder",
         "export --adapter {w}/adapter --adapter-only {w}/victim --overwrite", 2,
         ("victim", "--adapter-only", "no recone.json")),
    Case("export-adapter-only-dot", "export --adapter ../adapter --adapter-only . --overwrite",
         2, ("--adapter-only", "current folder"), "empty"),
    Case("export-merged-onto-someone-elses-folder",
         "export --adapter {w}/adapter --merged {w}/victim --overwrite", 2,
         ("victim", "--merged", "no recone.json")),
    Case("export-gguf-onto-a-folder",
         "export --adapter {w}/adapter --gguf {w}/victim --overwrite --llama-cpp {w}/llama.cpp", 2,
         ("victim", "--gguf", "not a file")),
    Case("train-out-someone-elses-folder",
         "train --recipe {w}/tiny.yaml --out {w}/victim --overwrite", 2,
         ("victim", "holds no recone-lite run")),
    Case("train-out-a-file", "train --recipe {w}/tiny.yaml --out {w}/requests.jsonl", 2,
         ("requests.jsonl", "not a directory")),
    Case("train-overwrite-the-run-it-runs-in",
         "train --recipe ../tiny.yaml --out . --overwrite", 2, ("current folder",), "run"),
    Case("sft-out-someone-elses-folder",
         "sft --traces {w}/data/traces.jsonl --recipe {w}/tiny-sft.yaml --out {w}/victim "
         "--overwrite", 2, ("victim", "holds no recone-lite run")),
    Case("demo-out-someone-elses-folder",
         "demo --data {w}/data --out {w}/victim --overwrite", 2,
         ("victim", "holds no recone-lite run")),
    Case("report-out-someone-elses-folder", "report {w}/run --out {w}/victim", 2,
         ("victim", "no report.html")),
    Case("report-out-dot", "report {w}/run --out .", 2, ("current folder",), "inner"),
    # --- the audit: a replace deletes only what the command itself wrote -----------------------
    Case("report-out-holds-the-run-it-reports",  # `report reports/myrun --out reports`
         "report {w}/reports/myrun --out {w}/reports", 2,
         ("reports/myrun: RUN_DIR: lies inside --out", "choose another --out")),
    Case("report-out-holds-an-eval-it-reads",
         "report {w}/run --eval {w}/reports/x-eval.json --out {w}/reports", 2,
         ("x-eval.json: --eval: lies inside --out",)),
    Case("report-out-a-report-folder-with-the-users-notes",
         "report {w}/run --out {w}/old-report", 2,
         ("old-report: --out: holds notes.txt, which this command does not write",)),
    Case("prepare-overwrite-with-the-input-inside-out",  # `--reviews data/u.data --out data`
         "data prepare --source amazon-2023 --reviews {w}/data/traces.jsonl --out {w}/data "
         "--overwrite", 2, ("traces.jsonl: --reviews: lies inside --out",)),
    Case("prepare-overwrite-a-prepared-folder-holding-more",
         "data prepare --source amazon-2023 --reviews {w}/reviews.jsonl --out {w}/data "
         "--overwrite", 2, ("data: --out: holds traces.jsonl, which this command does not write",
                            "never deletes")),
    Case("export-overwrite-an-export-with-the-users-notes",
         "export --adapter {w}/adapter --adapter-only {w}/old-export --overwrite", 2,
         ("old-export: --adapter-only: holds data, which this command does not write",)),
    Case("export-overwrite-an-export-holding-data-it-reads",
         "export --adapter {w}/adapter --merged {w}/old-export --data {w}/old-export/data "
         "--overwrite", 2, ("old-export: --merged: would replace", "old-export/data")),
    Case("demo-out-another-recipes-finished-run",
         "demo --data {w}/data --out {w}/music-run", 2,
         ("music-run: --out: holds a run of recipe music-grpo, not cpu-demo",)),
    Case("demo-overwrite-another-recipes-run",
         "demo --data {w}/data --out {w}/music-run --overwrite", 2,
         ("music-run: --out: holds a run of recipe music-grpo, not cpu-demo",)),
    Case("demo-out-a-run-without-its-recipe", "demo --data {w}/data --out {w}/run", 2,
         ("run: --out: holds a run of no recorded recipe, not cpu-demo",)),
    Case("export-gguf-recone-json-exists",
         "export --adapter {w}/adapter --gguf {w}/m.gguf --llama-cpp {w}/llama.cpp", 2,
         ("m.recone.json: exists; pass --overwrite",)),
    # --- item 2: remote code only on an explicit command-line flag ----------------------------
    Case("train-recipe-asks-for-remote-code", "train --recipe {w}/trust.yaml --dry-run", 2,
         ("trust.yaml", "trust_remote_code", "--trust-remote-code")),
    Case("train-override-asks-for-remote-code",
         "train --recipe cpu-demo model.trust_remote_code=true --dry-run", 2,
         ("the override model.trust_remote_code=true", "--trust-remote-code")),
    Case("sft-recipe-asks-for-remote-code",
         "sft --traces {w}/requests.jsonl --recipe {w}/trust.yaml --dry-run", 2,
         ("trust.yaml", "--trust-remote-code")),
    Case("demo-override-asks-for-remote-code",
         "demo model.trust_remote_code=true --data {w}/data --out {w}/demo-run", 2,
         ("the override model.trust_remote_code=true", "--trust-remote-code")),
    Case("launch-recipe-asks-for-remote-code", "launch --recipe {w}/trust-launch.yaml --dry-run",
         2, ("job", "trust_remote_code", "--trust-remote-code")),
    Case("export-run-recipe-asks-for-remote-code",
         "export --adapter {w}/run-trust --adapter-only {w}/out", 2,
         ("run-trust/recipe.yaml", "--trust-remote-code")),
    Case("export-base-with-custom-code-is-not-run-nor-asked",
         "export --adapter {w}/run-trust --base {w}/custom --adapter-only {w}/out", 2,
         ("custom", "contains custom code", "--trust-remote-code")),
    # --- item 3: value ranges at validation time -----------------------------------------------
    Case("recipe-with-a-duplicate-key", "recipes validate {w}/dup.yaml", 2,
         ("dup.yaml:4:", "duplicate key 'grpo'")),
    Case("recipe-with-a-negative-learning-rate", "recipes validate {w}/bad-lr.yaml", 2,
         ("bad-lr.yaml", "grpo.learning_rate", "> 0")),
    Case("override-num-generations-0-dry-run",
         "train --recipe cpu-demo grpo.num_generations=0 --dry-run", 2,
         ("override 'grpo.num_generations=0'", "at least 2")),
    Case("override-num-generations-1-plan", "plan --recipe cpu-demo grpo.num_generations=1", 2,
         ("override 'grpo.num_generations=1'", "at least 2")),
    Case("override-infinite-learning-rate", "recipes show cpu-demo grpo.learning_rate=.inf", 2,
         ("override 'grpo.learning_rate=.inf'", "finite")),
    Case("override-nan-temperature", "train --recipe cpu-demo grpo.temperature=.nan --dry-run",
         2, ("grpo.temperature", "finite")),
    Case("override-zero-completion-length",
         "train --recipe cpu-demo grpo.max_completion_length=0 --dry-run", 2,
         ("grpo.max_completion_length", "> 0")),
    Case("override-20-digit-size", "plan --recipe cpu-demo data.max_history=99999999999999999999",
         2, ("override 'data.max_history=99999999999999999999'", "too large")),
    Case("override-zero-warmup-learning-rate",
         "recipes show cpu-demo warmup.learning_rate=.inf", 2, ("warmup.learning_rate", "finite")),
    Case("prepare-20-digit-history",
         "data prepare --source amazon-2023 --reviews {w}/reviews.jsonl --out {w}/new "
         "--history 99999999999999999999", 2, ("--history",), usage=True),
    # --- item 5: the partial cases ---------------------------------------------------------------
    Case("predict-input-is-a-folder", OPENAI + " {w}/victim --out {w}/p.jsonl", 2,
         ("victim", "is a folder, not a file")),
    Case("predict-out-is-its-input", OPENAI + " {w}/requests.jsonl --out {w}/requests.jsonl "
         "--resume", 2, ("requests.jsonl", "is the input file")),
    Case("predict-resume-onto-another-runs-rows", OPENAI + " {w}/requests.jsonl --out "
         "{w}/other-predictions.jsonl --resume", 2,
         ("other-predictions.jsonl", "--resume", "not in", "'zz'")),
    Case("predict-resume-onto-someone-elses-jsonl", OPENAI + " {w}/requests.jsonl --out "
         "{w}/notes.jsonl --resume", 2, ("notes.jsonl:1:", "not a row of `predict`")),
    Case("data-stats-on-a-corrupt-manifest", "data stats {w}/bad-data", 2,
         ("bad-data/manifest.json:1:", "malformed JSON")),
    Case("recipes-validate-a-folder", "recipes validate {w}/victim", 2,
         ("victim", "is a folder")),
    Case("sft-traces-a-folder", "sft --traces {w}/victim --recipe {w}/tiny-sft.yaml", 2,
         ("victim", "is a folder")),
    Case("traces-inspect-a-folder", "traces inspect {w}/victim", 2, ("victim", "is a folder")),
    Case("report-eval-a-folder", "report {w}/run --eval {w}/victim", 2,
         ("victim", "is a folder")),
    Case("eval-predictions-a-folder",
         "eval --data {w}/data --predictions {w}/victim", 2, ("victim", "is a folder")),
    Case("baselines-splits-comma", "baselines --data {w}/data --splits ,", 2,
         ("--splits", "names no split")),
    Case("demo-data-is-a-file", "demo --data {w}/requests.jsonl --out {w}/demo-run", 2,
         ("requests.jsonl", "--data", "is a file")),
    Case("predict-20-digit-batch-size", OPENAI + " {w}/requests.jsonl --batch-size "
         "99999999999999999999", 2, ("--batch-size",), usage=True),
    Case("traces-20-digit-concurrency", TRACES + " {w}/data --out {w}/t.jsonl --concurrency "
         "99999999999999999999", 2, ("--concurrency",), usage=True),
    Case("predict-out-a-folder", "predict {w}/requests.jsonl --model {w}/empty --out {w}/victim",
         2, ("victim", "is a folder")),
]


def tree(root: Path) -> dict[str, str | None]:
    """Every path under `root`: a file's sha256, None for a folder."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a user has around the commands: built once, copied for each case."""
    root = tmp_path_factory.mktemp("world") / "w"
    write_template_traces(write_prepared(root / "data", {"train": 4, "dev": 2, "test": 2,
                                                         "coldstart": 2}))
    (root / "victim" / "src").mkdir(parents=True)
    (root / "victim" / "notes.txt").write_text("my notes")
    (root / "victim" / "src" / "main.py").write_text("print('mine')\n")
    (root / "inner").mkdir()
    (root / "inner" / "mine.txt").write_text("mine")
    (root / "inner" / "t.dropped.jsonl").mkdir()  # a folder where a file would go
    (root / "empty").mkdir()
    (root / "llama.cpp").mkdir()
    (root / "llama.cpp" / "convert_hf_to_gguf.py").write_text("raise SystemExit(1)\n")
    (root / "reviews.jsonl").write_text(json.dumps(
        {"user_id": "u", "parent_asin": "i", "rating": 4.0, "timestamp": 1000}) + "\n")
    (root / "requests.jsonl").write_text(json.dumps(
        {"id": "r1", "history": [], "target": {"title": "T"}}) + "\n")
    run = root / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (run / "recipe.yaml").write_text("model: {name: some-base}\n")
    (run / "run.json").write_text(json.dumps({"status": "finished", "global_step": 2}))
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    (root / "dup.yaml").write_text("extends: cpu-demo\ngrpo:\n  learning_rate: 1.0e-5\n"
                                   "grpo:\n  max_steps: 2\n")
    (root / "bad-lr.yaml").write_text("extends: cpu-demo\ngrpo:\n  learning_rate: -1.0e-5\n")
    (root / "other-predictions.jsonl").write_text('{"id": "zz", "ok": true, "rating": 4}\n')
    (root / "notes.jsonl").write_text('{"note": "mine"}\n')
    shutil.copytree(root / "data", root / "bad-data")
    (root / "bad-data" / "manifest.json").write_text("{broken")
    (root / "reports").mkdir()  # an earlier `report --out reports`, then the user's files
    (root / "reports" / "report.html").write_text("<html>old</html>")
    (root / "reports" / "notes.txt").write_text("my notes")
    (root / "reports" / "x-eval.json").write_text(json.dumps({"split": "test"}))
    shutil.copytree(run, root / "reports" / "myrun")
    (root / "old-report").mkdir()
    (root / "old-report" / "report.html").write_text("<html>old</html>")
    (root / "old-report" / "loss.png").write_bytes(b"\x89PNG old")
    (root / "old-report" / "notes.txt").write_text("my notes")
    (root / "old-export").mkdir()
    (root / "old-export" / "recone.json").write_text("{}")
    (root / "old-export" / "adapter_config.json").write_text("{}")
    (root / "old-export" / "notes.txt").write_text("my notes")
    shutil.copytree(root / "data", root / "old-export" / "data")
    (root / "m.recone.json").write_text('{"kind": "gguf"}')
    shutil.copytree(run, root / "music-run")  # a finished run of another recipe than the demo's
    (root / "music-run" / "run.json").write_text(json.dumps(
        {"status": "finished", "global_step": 2, "recipe": "music-grpo"}))
    tiny = {"model": {"name": "some-base"}, "data": {"dir": str(root / "data")},
            "output_dir": str(root / "runs" / "tiny")}
    (root / "tiny.yaml").write_text(json.dumps(tiny))  # JSON is YAML
    (root / "tiny-sft.yaml").write_text(json.dumps({**tiny, "kind": "sft"}))
    (root / "trust-launch.yaml").write_text(
        "extends: h20x8-multi-adapter\nmodel:\n  trust_remote_code: true\n")
    (root / "trust.yaml").write_text("extends: cpu-demo\nmodel:\n  trust_remote_code: true\n")
    custom = root / "custom"  # a base whose own code would leave a file if it ran
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps(
        {"model_type": "custom-x", "architectures": ["XForCausalLM"],
         "auto_map": {"AutoConfig": "configuration_x.XConfig",
                      "AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    (custom / "configuration_x.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('RAN').touch()\n"
        "from transformers import PretrainedConfig\n"
        "class XConfig(PretrainedConfig):\n    model_type = 'custom-x'\n")
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": "some-base", "r": 8,
         "target_modules": ["q_proj"]}))
    (adapter / "adapter_model.safetensors").write_bytes(b"not read before the checks")
    shutil.copytree(adapter, root / "run-trust")
    (root / "run-trust" / "recipe.yaml").write_text(
        "model:\n  name: some-base\n  trust_remote_code: true\n")
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "w"
    shutil.copytree(world, root)
    before = tree(tmp_path)
    monkeypatch.chdir(root / case.cwd)
    code, _, err = main(capsys, *case.args.format(w=root).split())
    assert code == case.code, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    if case.usage:  # click's usage box: the words somewhere in it
        last = " ".join(err.split())
    else:
        assert last.startswith("error: "), err
    for word in case.words:
        assert word in last, (word, last)
    assert tree(tmp_path) == before


# --- the guard inside atomic_path itself (what every writer goes through) ------------------------


def test_a_folder_that_appears_at_the_final_name_is_not_replaced(tmp_path: Path) -> None:
    from recone_lite.errors import InputError
    from recone_lite.files import atomic_path

    final = tmp_path / "p.jsonl"
    with pytest.raises(InputError, match="is a folder"), atomic_path(final) as tmp:
        tmp.write_text("new")
        (final / "theirs").mkdir(parents=True)  # made by someone else while we wrote
        (final / "theirs" / "a.txt").write_text("theirs")
    assert tree(tmp_path) == {"p.jsonl": None, "p.jsonl/theirs": None,
                              "p.jsonl/theirs/a.txt": hashlib.sha256(b"theirs").hexdigest()}


def test_what_a_killed_write_moved_aside_is_put_back(tmp_path: Path) -> None:
    from recone_lite.files import REPLACED, WRITER_LOCK, remove_stale

    final = tmp_path / "prepared"
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    aside = tmp_path / f".prepared.{dead}.abcd.tmp"
    (aside / REPLACED).mkdir(parents=True)
    (aside / REPLACED / "manifest.json").write_text("{}")
    (aside / WRITER_LOCK).touch()  # its writer's lock, held by nobody now
    remove_stale(final)
    assert tree(tmp_path) == {"prepared": None, "prepared/manifest.json":
                              hashlib.sha256(b"{}").hexdigest()}


def test_the_flag_lets_a_recipe_run_remote_code(world: Path) -> None:
    from recone_lite.training import resolve_recipe

    recipe = resolve_recipe(str(world / "trust.yaml"), None, None, None, trust_remote_code=True)
    assert recipe.model.trust_remote_code is True
    assert resolve_recipe("cpu-demo", None, None, None).model.trust_remote_code is False


# --- item 4: a malformed reply is a failed row, counted like a 5xx -------------------------------

HTML = (200, "text/html", b"<html><body>502 Bad Gateway (proxy)</body></html>")


def test_predict_counts_html_replies_as_failed_rows(world: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from chat_server import chat_server

    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps({"id": f"r{i}", "history": [],
                                            "target": {"title": "T"}}) + "\n" for i in range(3)))
    out = tmp_path / "p.jsonl"
    with chat_server(raw=[HTML]) as server:  # the first request, then good answers
        code, _, err = main(capsys, "predict", requests, "--backend", "openai", "--base-url",
                            server.url, "--model", "m", "--out", out, "--concurrency", "1")
    assert code == 0 and "Traceback" not in err, err
    assert "1 request errors" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ok"] for r in rows] == [False, True, True]
    assert rows[0]["error"].startswith("bad response: not JSON")
    with chat_server(raw=[HTML] * 3) as server:  # every one: exit 1, one line, nothing written
        code, _, err = main(capsys, "predict", requests, "--backend", "openai", "--base-url",
                            server.url, "--model", "m", "--out", tmp_path / "q.jsonl")
    assert code == 1 and "Traceback" not in err, err
    assert "all 3 requests failed" in err.strip().splitlines()[-1]
    assert not (tmp_path / "q.jsonl").exists()


def test_predict_never_removes_a_symlinked_out(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """The audit's dangling `--out` link: exists() said no, so a run whose every request failed
    unlinked the user's symlink. Now refused before anything (exit 2, one line), and the
    take-back after an outage cuts a link's target back but never removes the link."""
    from chat_server import chat_server

    from recone_lite.predict import _take_back

    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps({"id": f"r{i}", "history": [],
                                            "target": {"title": "T"}}) + "\n" for i in range(2)))
    target = tmp_path / "elsewhere" / "p.jsonl"
    link = tmp_path / "p.jsonl"
    link.symlink_to(target)
    code, _, err = main(capsys, "predict", requests, "--backend", "openai", "--base-url",
                        "http://127.0.0.1:9/v1", "--model", "m", "--out", link)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: {link}: --out: is a symlink to a missing file ({target}); give the file itself "
        "or another name")
    assert link.is_symlink() and not target.parent.exists()
    target.parent.mkdir()
    target.write_text("")  # a live link to an empty file: predict appends to the target
    with chat_server(raw=[HTML] * 2) as server:
        code, _, err = main(capsys, "predict", requests, "--backend", "openai", "--base-url",
                            server.url, "--model", "m", "--out", link, "--concurrency", "1")
    assert code == 1 and "all 2 requests failed" in err, err
    assert link.is_symlink() and link.resolve() == target and target.read_text() == ""
    target.write_text("rows of this run\n")  # as if the target appeared during the run
    assert _take_back(link, None).startswith("; nothing added to")
    assert link.is_symlink() and target.read_text() == ""


def test_traces_make_counts_html_replies_as_teacher_errors(world: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from chat_server import chat_server

    out = tmp_path / "t.jsonl"
    truncated = (200, "application/json", b'{"choices": [{"index": 0, "mess')
    with chat_server(raw=[HTML, truncated], reply=lambda m: "<rate>4</rate>") as server:
        code, stdout, err = main(capsys, "traces", "make", "--data", world / "data", "--split",
                                 "train", "--out", out, "--base-url", server.url, "--model", "m",
                                 "--concurrency", "1")
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(stdout)["dropped"].get("teacher_error") == 2
    dropped = [json.loads(line) for line in (tmp_path / "t.dropped.jsonl").read_text()
               .splitlines() if json.loads(line)["reason"] == "teacher_error"]
    assert [r["error"].split(":")[0] for r in dropped] == ["bad response"] * 2
    with chat_server(raw=[HTML] * 2) as server:  # every reply: an outage, one line, exit 1
        code, stdout, err = main(capsys, "traces", "make", "--data", world / "data", "--out",
                                 tmp_path / "u.jsonl", "--base-url", server.url, "--model", "m")
    assert code == 1 and "Traceback" not in err, err
    assert "all 2 teacher requests failed (first: bad response: not JSON" in err
    assert not (tmp_path / "u.jsonl").exists()


def test_report_replaces_its_own_folder_whole(world: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib", reason="the report extra: pip install -e '.[report]'")
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    for _ in range(2):  # the second replaces the first's folder (report.html marks it ours)
        code, stdout, err = main(capsys, "report", run)
        assert code == 0, err
        written = json.loads(stdout)
        assert Path(written["html"]) == run / "report" / "report.html"
        assert written["pictures"] and all(Path(p).is_file() for p in written["pictures"])
        (run / "report" / "old.png").write_bytes(b"from before")
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".recone-writer.lock"]
    code, _, err = main(capsys, "report", run)
    assert code == 0 and not (run / "report" / "old.png").exists()
