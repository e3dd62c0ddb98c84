"""`recone-lite report` on a real run and real evaluations: a format warm-up then 2 GRPO steps of
SmolLM2-135M on the tiny prepared set (dev evaluations, log and alarms as `train` writes them),
then `predict` with its adapter and `eval`, once with the expected readout and once with the text
readout. The PNGs must be whole images of the promised size, the page must hold every one and,
in headless Chromium (Debian's `chromium`), load them all and show the run's name and final dev
MAE. Without matplotlib the command still exits 0, with the terminal view and the hint."""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import cli, main, write_prepared, write_recipe

from recone_lite.jsonl import dumps
from recone_lite.report import HEIGHT, HINT, WIDTH

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                 "google-chrome"))), None)


@pytest.fixture(scope="module")
def run_and_evals(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """As test_grpo's run: a format warm-up (6 SFT steps) then 2 GRPO steps of SmolLM2-135M, so
    the dev evaluations parse answers and have an MAE; ~1 minute on 2 cores."""
    from recone_lite import grpo
    from recone_lite.config import load_recipe
    from recone_lite.evaluate import evaluate
    from recone_lite.predict import predict

    tmp = tmp_path_factory.mktemp("report")
    data = write_prepared(tmp / "data")
    run = tmp / "grpo-run"
    recipe = write_recipe(tmp / "r.yaml", data, run, smollm2_dir,
                          warmup={"steps": 6, "learning_rate": 3e-3, "batch_size": 4},
                          grpo={"temperature": 0.7, "save_steps": 10})
    grpo.train(load_recipe(str(recipe)), recipe_name="test")
    evals = {}
    for readout in ("expected", "text"):
        predictions = tmp / f"{readout}.jsonl"
        predict(str(data / "test.jsonl"), adapter=str(run), max_new_tokens=8, batch_size=8,
                readout=readout, out=str(predictions))
        evals[readout] = tmp / f"{readout}.json"
        evals[readout].write_text(dumps(evaluate(data, predictions, "test")) + "\n")
    return {"run": run, "evals": evals}


@pytest.fixture(scope="module")
def report(run_and_evals: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("matplotlib", reason="the report extra: pip install -e '.[report]'")
    out = tmp_path_factory.mktemp("out") / "report"
    evals = run_and_evals["evals"]
    result = cli("report", run_and_evals["run"], "--eval", evals["expected"],
                 "--eval", evals["text"], "--out", out)
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout), "out": out, "stderr": result.stderr}


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; the file must be a whole PNG (IEND last)."""
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", f"{path.name} is not whole"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_every_picture_is_a_whole_png_and_inlined_in_the_page(
    report: dict, run_and_evals: dict
) -> None:
    out = report["out"]
    pictures = sorted(out.glob("*.png"))
    assert sorted(map(Path, report["pictures"])) == pictures
    names = {p.stem for p in pictures}
    assert {"reward", "rates", "tokens", "loss", "entropy", "dev"} <= names  # a GRPO run's
    for label in ("expected", "text"):
        assert {f"{label}-confusion", f"{label}-per-rating", f"{label}-histogram"} <= names
    assert "expected-calibration" in names and "text-calibration" not in names
    assert "compare" in names  # two evaluations: side by side
    for path in pictures:
        assert png_size(path) == (WIDTH, HEIGHT), path.name
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        for path in pictures:
            with Image.open(path) as image:
                image.verify()  # the compressed data decodes: no truncated or corrupt file

    page = Path(report["html"]).read_text(encoding="utf-8")
    assert Path(report["html"]).parent == out
    assert page.count("<img ") == len(pictures)
    for path in pictures:  # each picture is in the page, byte for byte
        assert base64.b64encode(path.read_bytes()).decode() in page, path.name
    run = json.loads((run_and_evals["run"] / "run.json").read_text())
    assert "grpo-run" in page and f"{run['dev_metrics']['mae']:.4f}" in page
    for alarm in run["alarms"]:  # listed where they fired
        assert f"step {alarm['step']}: <b>{alarm['alarm']}</b>" in page
    assert "report.html" in report["stderr"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install "
                    "chromium; .ci/run installs it when it can)")
def test_the_page_loads_every_picture_in_headless_chromium(
    report: dict, run_and_evals: dict, tmp_path: Path
) -> None:
    """A copy of the page with a script that records, once loaded, each image's natural size and
    the visible text into the DOM, which `--dump-dom` prints; then a screenshot of the page."""
    probe = tmp_path / "probe.html"
    probe.write_text(Path(report["html"]).read_text(encoding="utf-8").replace(
        "</body>", "<script>window.addEventListener('load', () => {"
        "const images = [...document.images].map(i => [i.complete, i.naturalWidth, "
        "i.naturalHeight]); const result = document.createElement('pre'); result.id = 'probe';"
        "result.textContent = JSON.stringify({images, text: document.body.innerText});"
        "document.body.appendChild(result);});</script></body>"), encoding="utf-8")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000"]
    dumped = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True,
                            text=True, timeout=120)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    start = dumped.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    result = json.loads(html.unescape(dumped.stdout[start:dumped.stdout.index("</pre>", start)]))
    assert len(result["images"]) == len(report["pictures"])
    assert all(image == [True, WIDTH, HEIGHT] for image in result["images"]), result["images"]
    run = json.loads((run_and_evals["run"] / "run.json").read_text())
    assert "Run grpo-run" in result["text"]
    assert f"Final dev MAE {run['dev_metrics']['mae']:.4f}" in result["text"]

    shot = tmp_path / "page.png"
    taken = subprocess.run([*flags, "--window-size=900,2400", f"--screenshot={shot}",
                            Path(report["html"]).as_uri()], capture_output=True, text=True,
                           timeout=120)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert png_size(shot) == (900, 2400)


LAUNCHER = ("import sys; sys.modules['matplotlib'] = None; "  # `import matplotlib` fails
            "sys.argv = ['recone-lite', *sys.argv[1:]]; from recone_lite.cli import main; main()")


@pytest.mark.slow
def test_without_matplotlib_the_terminal_view_and_the_hint(
    run_and_evals: dict, tmp_path: Path
) -> None:
    evals = run_and_evals["evals"]
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "report", str(run_and_evals["run"]), "--eval",
         str(evals["expected"]), "--eval", str(evals["text"]), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"html": None, "pictures": [], "hint": HINT}
    assert not (tmp_path / "r").exists()
    err = result.stderr
    assert err.count(HINT) == 1 and err.rstrip().endswith(HINT)
    assert "run grpo-run" in err and "dev metrics" in err
    for series in ("reward", "format rate", "mean completion tokens", "loss", "dev MAE"):
        assert series in err, series
    assert any(block in err for block in "▁▂▃▄▅▆▇█")  # sparklines
    assert "true (rows) vs predicted" in err and "evaluations side by side" in err


def test_bad_inputs_exit_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = main(capsys, "report", tmp_path)
    assert code == 2 and "not a run folder" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "grpo", "status": "running"}))
    (tmp_path / "x.json").write_text(json.dumps({"split": "test"}))
    code, _, err = main(capsys, "report", run, "--eval", tmp_path / "x.json")
    assert code == 2 and "x.json" in err and "recone-lite eval" in err
    code, _, err = main(capsys, "report", run, "--eval", tmp_path / "missing.json")
    assert code == 2 and "missing.json: no such file" in err
