"""bench/gpu_check.sh + bench/gpu_check.py (issue 17), the parts a CPU can check: the shell
script parses, the tiny Qwen2 folder and the synthetic data are what the commands read, the
kernel check counts Unsloth's fused LoRA functions, and without CUDA the check exits 0 with every
GPU step marked skipped. The GPU steps themselves need a CUDA machine (docs/recipes.md)."""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[types.ModuleType]:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_shell_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_doctests(gpu_check: types.ModuleType) -> None:
    result = doctest.testmod(gpu_check)
    assert result.attempted >= 6 and result.failed == 0


def _fake_model(gpu_check: types.ModuleType, fused: bool) -> tuple[object, tuple]:
    """A stand-in for a peft model of 2 decoder layers, patched as Unsloth's patch_peft_model
    patches one (or not), and the stand-in kernel functions it was patched with."""

    def qkv(self, x):  # the three "kernels"
        return x

    def o(self, x):
        return x

    def mlp_kernel(self, x):
        return x

    class Param:
        dtype, requires_grad = "torch.float32", True

    def layer() -> types.SimpleNamespace:
        attention, mlp = types.SimpleNamespace(), types.SimpleNamespace()
        if fused:
            attention.apply_o = o
            mlp.forward = types.MethodType(mlp_kernel, mlp)
        return types.SimpleNamespace(self_attn=attention, mlp=mlp)

    config = types.SimpleNamespace(unsloth_version="2026.10.9")
    base = types.SimpleNamespace(model=types.SimpleNamespace(layers=[layer(), layer()]),
                                 config=config, modules=lambda: [], named_parameters=lambda: [])

    class Peft:

        def get_base_model(self):
            return base

        def named_parameters(self):
            return [("base_model.model.layers.0.mlp.up_proj.lora_A.default.weight", Param())]

        def modules(self):
            return [self]

    model = Peft()
    if fused:
        model._unsloth_gradient_checkpointing = "unsloth"  # patch_peft_model sets it so
    return model, (qkv, o, (mlp_kernel,))


@pytest.mark.parametrize("fused", [True, False])
def test_kernel_report(gpu_check: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
                       fused: bool) -> None:
    model, kernels = _fake_model(gpu_check, fused)
    monkeypatch.setattr(gpu_check, "unsloth_kernels", lambda: kernels)
    report = gpu_check.kernel_report(model)
    want = {"qkv": 0, "o": 2, "mlp": 2} if fused else {"qkv": 0, "o": 0, "mlp": 0}
    assert report["fused"] == want and report["layers"] == 2 and report["unsloth_loaded"]
    assert report["unsloth_gradient_checkpointing"] == ("'unsloth'" if fused else "'unset'")
    assert report["lora_dtype"] == "float32"
    status, detail = gpu_check.kernel_verdict(report)
    assert status == ("yes" if fused else "no")
    assert "qkv 0/2 (Qwen2's q/k/v have biases" in detail


def test_no_cuda_run_skips_gpu_steps(tmp_path: Path) -> None:
    """The whole script without CUDA: the environment and the tiny model are made, every GPU
    step is a skipped row, the table is on stdout and in --results, and the exit code is 0."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    work, results = tmp_path / "work", tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(work), "--results", str(results),
         "--tokenizer", "built", "--budget", "120"],
        capture_output=True, text=True, env=env, timeout=150, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["step"]: r for r in json.loads((results / "gpu_check.json").read_text())["rows"]}
    assert rows["environment"]["status"] == rows["tiny model"]["status"] == "ok"
    for step in ("grpo", "sft", "grpo from sft", "export", "predict hf"):
        assert rows[step]["status"].startswith("skipped: no CUDA device"), rows[step]
    assert rows["predict vllm"]["status"].startswith("skipped:")
    assert "| grpo | skipped: no CUDA device" in done.stdout
    assert (results / "gpu_check.md").read_text().count("\n| ") == len(rows) + 1  # + header

    # the model folder is one that Unsloth / vLLM / transformers read as Qwen2
    config = json.loads((work / "model" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["vocab_size"] % 64 == 0 and config["dtype"] == "bfloat16"
    assert (work / "model" / "model.safetensors").is_file()
    assert "<|im_start|>" in (work / "model" / "chat_template.jinja").read_text()

    # the data: the prepared format that training and predict check line by line
    from recone_lite.prepared import check_example, read_scale

    assert read_scale(work / "data") == (1.0, 5.0)
    for split, count in {"train": 32, "dev": 8, "test": 8, "coldstart": 16}.items():
        lines = (work / "data" / f"{split}.jsonl").read_text().splitlines()
        examples = [json.loads(x) for x in lines]
        assert len(examples) == count
        assert all(check_example(e) is None for e in examples)
        assert all(h["timestamp"] < e["timestamp"] for e in examples for h in e["history"])


def test_gpu_rows(gpu_check: types.ModuleType, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows a CUDA run writes, from what its children leave behind (faked here): the
    environment line, a GRPO run's run.json and kernel probe, a chained run without the kernels."""
    env = {"python": "3.11", "cuda": True, "torch_cuda": "12.8", "device": "NVIDIA H200",
           "devices": 1, "memory_gib": 139.8, "capability": [9, 0], "load_dtype": "bfloat16",
           "precision": "bf16 (compute capability 9.0)",
           "packages": {m: "1.0" for m, _ in gpu_check.CORE + gpu_check.SETUP + gpu_check.OPTIONAL}}
    check = gpu_check.Check(gpu_check.parse_args(["--work", str(tmp_path / "w"),
                                                  "--results", str(tmp_path / "r")]))
    outputs = iter([json.dumps(env)])

    def fake_run(name, argv):
        return gpu_check.Child(0, 1.0, next(outputs, ""), tmp_path / "none.log")

    monkeypatch.setattr(check, "run", fake_run)
    gpu_check.step_environment(check)
    assert "NVIDIA H200 x1 (139.8 GiB, cc 9.0)" in check.rows[0].detail
    assert "model.dtype bfloat16 loads as bfloat16" in check.rows[0].detail

    check.setup = {"model": "/m", "data": "/d"}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "status": "finished", "global_step": 2, "mean_step_time_s": 12.5, "wall_time_s": 40,
        "peak_gpu_memory_gib": 3.1, "mean_output_tokens": 640.0, "dev_metrics": {}}))
    loaded = {"unsloth_loaded": True, "layers": 2, "fused": {"qkv": 0, "o": 2, "mlp": 2},
              "unsloth_gradient_checkpointing": "'unsloth'", "lora_dtype": "float32",
              "base_weights": "Linear4bit"}
    plain = {**loaded, "fused": {"qkv": 0, "o": 0, "mlp": 0},
             "unsloth_gradient_checkpointing": "'unset'"}
    for name, report in (("grpo", loaded), ("grpo from sft", plain)):
        check.probe_path(name).write_text(json.dumps({"loaded": report}))
        child = gpu_check.Child(0, 50.0, "", tmp_path / "none.log")
        assert gpu_check.train_row(check, name, child, run_dir, "music-grpo")
    rows = {r.step: r for r in check.rows}
    assert rows["grpo"].peak_gib == 3.1 and "via Unsloth, base weights Linear4bit" in \
        rows["grpo"].detail
    assert rows["kernels: music-grpo"].status == "yes"
    assert rows["kernels: music-recone"].status == "no"
    assert "expected yes" in rows["kernels: music-recone"].detail


def _interpreter_without(tmp_path: Path, hidden: tuple[str, ...]) -> Path:
    """A real interpreter that lacks `hidden`: this Python run with `-S` (no site-packages) and a
    folder that links every entry of its site-packages folders but those packages (and their
    dist-info). Nothing is faked inside: `import trl` fails there as on a bare machine."""
    folders = [Path(x) for x in sys.path
               if x.rstrip("/").endswith(("site-packages", "dist-packages")) and Path(x).is_dir()]
    view = tmp_path / "site-view"
    view.mkdir()
    for folder in folders:  # in sys.path order: the first of a name wins, as in imports
        for entry in folder.iterdir():
            stem = entry.name.split("-")[0].split(".")[0].lower()
            if stem in hidden or entry.suffix == ".pth" or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry)
    wrapper = tmp_path / "python-without"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH="{view}:$PYTHONPATH" exec {sys.executable} -S "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_gpu_target_without_trl_fails(tmp_path: Path) -> None:
    """bench/gpu_check.sh is the GPU target's entry point (it passes --strict): on a machine
    without trl and unsloth it must exit 1 with one FAILED line naming them, where the old
    script skipped every step and exited 0. No CUDA here, which the target run counts as a
    failure too."""
    python = _interpreter_without(tmp_path, ("trl", "unsloth", "unsloth_zoo"))
    probe = subprocess.run([str(python), "-c", "import torch, transformers, yaml; import trl"],
                           capture_output=True, text=True, env={**os.environ,
                                                                "PYTHONPATH": str(ROOT)})
    assert "No module named 'trl'" in probe.stderr, probe.stderr  # the machine we mean
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHON": str(python), "GPU_CHECK_BUNDLE": str(tmp_path / "no-bundle"),
           "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out")}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--work", str(tmp_path / "work"),
         "--tokenizer", "built", "--python", str(python), "--only", "grpo"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    verdict = [x for x in done.stderr.splitlines() if x.startswith("gpu_check: ")][-1]
    assert verdict.startswith("gpu_check: FAILED: imports: fail"), verdict
    assert "no CUDA device" in verdict and "trl not installed" in verdict
    assert "unsloth not installed" in verdict
    assert "grpo: fail: trl not installed on the GPU target" in verdict

    out = tmp_path / "out"
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["strict"] and "grpo" in result["failing"] and "imports" in result["failing"]
    assert "GPU target" in result["header"]
    assert (out / "gpu_check.md").read_text().rstrip().endswith(verdict)
    # what comes back from a device call: three files, the logs packed in one tar
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json", "gpu_check.md", "gpu_check_logs.tar.gz"]
    import tarfile

    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu_check_logs/logs/environment.log" in names, names


def test_failing_rows_on_the_gpu_target(gpu_check: types.ModuleType, tmp_path: Path) -> None:
    """Which rows fail the check: on the GPU target a kernel row `no`, a skip and a budget skip
    do; vLLM's `not run` does not; without CUDA (no --strict) skips are fine."""
    rows = [gpu_check.Row("kernels: music-grpo", "no"),
            gpu_check.Row("predict hf", "skipped: time budget spent (3 s left)"),
            gpu_check.Row("predict vllm", "not run: vllm not installed (optional)"),
            gpu_check.Row("export", "ok")]
    for strict, cuda, want in ((True, False, 2), (False, True, 2), (False, False, 0)):
        args = ["--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
        check = gpu_check.Check(gpu_check.parse_args(args + (["--strict"] if strict else [])))
        check.env = {"cuda": cuda}
        check.rows = list(rows)
        assert len(check.failures()) == want, (strict, cuda)
        assert check.verdict().startswith("gpu_check: FAILED" if want else "gpu_check: PASSED")
    cpu = gpu_check.Check(gpu_check.parse_args(["--cpu", "--strict", "--work", str(tmp_path)]))
    cpu.env, cpu.rows = {"cuda": False}, list(rows)
    assert not cpu.failures()  # the rehearsal is never the target


def test_bundle_pins_sit_in_the_projects_lattice() -> None:
    """bench/gpu_bundle.sh's pinned wheels satisfy pyproject.toml's own requirements (a bundle
    that drifted from the lattice would test another stack than the one users install), and
    the script parses. Building it needs PyPI: docs/recipes.md has the measured run."""
    import re

    from packaging.requirements import Requirement

    script = (ROOT / "bench" / "gpu_bundle.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_bundle.sh")]).returncode == 0
    block = re.search(r"^PACKAGES=\((.*?)^\)", script, re.M | re.S).group(1)
    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==([\w.]+)", block))
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pyproject = (ROOT / "pyproject.toml").read_text()
    wanted = [Requirement(x) for x in re.findall(r'^\s*"([^"]+)",?(?:\s*#.*)?$', pyproject, re.M)]
    wanted += [Requirement(x) for x in re.findall(r'"(unsloth[^"]*)"', pyproject)]
    pinned = {norm(name): version for name, version in pins.items()}
    checked = 0
    for req in wanted:
        if norm(req.name) in pinned:
            assert req.specifier.contains(pinned[norm(req.name)]), (req, pinned[norm(req.name)])
            checked += 1
    assert checked >= 7  # trl, datasets, bitsandbytes, gguf, pydantic, unsloth, unsloth_zoo
    for needed in ("trl", "datasets", "pydantic", "pydantic-core", "bitsandbytes", "unsloth",
                   "unsloth-zoo", "dill", "multiprocess"):
        assert needed in pinned, needed
