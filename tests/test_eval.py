"""Baselines, `recone-lite eval`, `baselines` and `data show` on a tiny hand-made folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recone_lite.baselines import baselines_report, fit_baselines, fit_on_train, train_ratings
from recone_lite.cli import app
from recone_lite.errors import InputError
from recone_lite.evaluate import evaluate
from recone_lite.prepared import iter_split

runner = CliRunner()


def interaction(item: str, ts: int, rating: float) -> dict:
    return {
        "item_id": item,
        "timestamp": ts,
        "item": {"title": f"Film {item}"},
        "rating": rating,
        "review": f"review of {item}",
    }


def ex(split: str, user: str, item: str, ts: int, rating: float, history: list[dict]) -> dict:
    return {
        "id": f"{split}-{user}-{item}",
        "user_id": user,
        "item_id": item,
        "rating": rating,
        "timestamp": ts,
        "history": history,
        "target": {"title": f"Film {item}"},
    }


A10, B20, C5 = interaction("a", 10, 2.0), interaction("b", 20, 4.0), interaction("c", 5, 3.0)
SPLITS = {
    # train ratings, deduplicated: (u1,a,2) (u1,b,4) (u1,c,3) (u2,c,3) (u2,a,5); mean 17/5 = 3.4
    "train": [
        ex("train", "u1", "b", 20, 4.0, [A10]),
        ex("train", "u2", "a", 15, 5.0, [C5]),
        ex("train", "u1", "c", 30, 3.0, [A10, B20]),
    ],
    "dev": [ex("dev", "u1", "d", 40, 5.0, [A10, B20]), ex("dev", "u2", "b", 40, 4.0, [C5])],
    "test": [
        ex("test", "u1", "e", 50, 1.0, [A10, B20]),
        ex("test", "u2", "b", 50, 2.0, [C5]),
        ex("test", "u3", "a", 50, 4.0, []),
    ],
    "coldstart": [],
}


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"rating_scale": [1.0, 5.0]}))
    for split, rows in SPLITS.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def write_predictions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recone_lite", *args], capture_output=True, text=True
    )


# --- baselines ---------------------------------------------------------------------------------


def test_train_ratings_dedup_and_no_dev_test(data: Path) -> None:
    ratings = train_ratings(iter_split(data, "train"))
    assert sorted(ratings) == [
        ("u1", "a", 2.0),
        ("u1", "b", 4.0),
        ("u1", "c", 3.0),
        ("u2", "a", 5.0),
        ("u2", "c", 3.0),
    ]


def test_baselines_hand_computed(data: Path) -> None:
    report = baselines_report(data)
    assert report["fit"]["ratings"] == 5 and report["fit"]["global_mean"] == 3.4
    test = report["splits"]["test"]
    # truths 1, 2, 4 for (u1,e) (u2,b) (u3,a)
    assert test["global_mean"]["mae"] == round((2.4 + 1.4 + 0.6) / 3, 4)
    assert test["user_mean"]["mae"] == round((2.0 + 2.0 + 0.6) / 3, 4)  # u1 3.0, u2 4.0, u3 ->3.4
    assert test["item_mean"]["mae"] == round((2.4 + 2.0 + 0.5) / 3, 4)  # e ->3.4, b 4.0, a 3.5
    dev = report["splits"]["dev"]
    assert dev["user_mean"]["mae"] == round((2.0 + 0.0) / 2, 4)
    assert set(test) == {"global_mean", "user_mean", "item_mean", "mf"}


def test_mf_is_deterministic_and_on_scale(data: Path) -> None:
    first, _ = fit_on_train(data)
    second, _ = fit_on_train(data)
    pairs = [("u1", "a"), ("u2", "b"), ("u3", "zz")]
    assert [first["mf"](*p) for p in pairs] == [second["mf"](*p) for p in pairs]
    assert all(1.0 <= first["mf"](*p) <= 5.0 for p in pairs)
    assert first["mf"]("nobody", "nothing") == pytest.approx(3.4)


def test_mf_learns_on_structured_data() -> None:
    # users 0-9 love even items and hate odd ones; MF should beat the item mean on held-out pairs
    ratings = [
        (f"u{u}", f"i{i}", 5.0 if (u + i) % 2 == 0 else 1.0)
        for u in range(10)
        for i in range(10)
        if (u * 7 + i) % 5
    ]
    fitted = fit_baselines(ratings, (1.0, 5.0))
    held = [
        (f"u{u}", f"i{i}", 5.0 if (u + i) % 2 == 0 else 1.0)
        for u in range(10)
        for i in range(10)
        if not (u * 7 + i) % 5
    ]
    mf = sum(abs(fitted["mf"](u, i) - r) for u, i, r in held) / len(held)
    mean = sum(abs(fitted["global_mean"](u, i) - r) for u, i, r in held) / len(held)
    assert mf < mean


def test_baselines_command(data: Path) -> None:
    result = runner.invoke(app, ["baselines", "--data", str(data)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["splits"]) == {"dev", "test"}
    assert "global mean" in result.stderr and "biased MF" in result.stderr


# --- eval --------------------------------------------------------------------------------------


def test_eval_scores_model_and_baselines_on_the_same_examples(data: Path, tmp_path: Path) -> None:
    preds = write_predictions(
        tmp_path / "p.jsonl",
        [
            {"id": "test-u1-e", "rating": 1.0, "ok": True, "completion": "<rate>1</rate>"},
            {"id": "test-u2-b", "rating": None, "ok": False, "completion": "no idea"},
            {"id": "test-u3-a", "rating": 6, "ok": True, "truth": 4.0},
        ],
    )
    result = runner.invoke(app, ["eval", "--data", str(data), "--predictions", str(preds)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    model = report["model"]
    assert (model["n"], model["parsed"], model["coverage"], model["clipped"]) == (3, 2, 0.6667, 1)
    assert model["mae"] == 0.5  # |1-1| and |5-4| (6 clipped to 5)
    assert model["mae_with_failures"] == 0.8  # the failure priced at |3.4 - 2|
    assert model["failures_scored_as"]["prediction"] == 3.4
    assert report["baselines"]["global_mean"]["mae"] == round(4.4 / 3, 4)
    assert report["format_ok"] == 0.6667
    assert (report["missing"], report["extra"], report["duplicates"]) == (0, 0, 0)
    for text in ("model", "coverage", "MAE w/ failures", "global mean", "true rating"):
        assert text in result.stderr


def test_eval_reports_missing_extra_duplicate_ids(data: Path, tmp_path: Path) -> None:
    preds = write_predictions(
        tmp_path / "p.jsonl",
        [
            {"id": "test-u1-e", "rating": 2.0, "ok": True},
            {"id": "test-u1-e", "rating": 1.0, "ok": True},
            {"id": "dev-u1-d", "rating": 5.0, "ok": True},
        ],
    )
    report = evaluate(data, preds, "test")
    assert (report["matched"], report["missing"], report["extra"], report["duplicates"]) == (
        1,
        2,
        1,
        1,
    )
    assert report["model"]["mae"] == 1.0  # the first line of a duplicate counts
    assert report["baselines"]["global_mean"]["n"] == 1  # baselines on the same examples

    result = cli("eval", "--data", str(data), "--predictions", str(preds), "--strict")
    assert result.returncode == 2 and result.stdout == ""
    assert "2 examples of split 'test' have no prediction" in result.stderr
    assert "1 ids appear more than once" in result.stderr
    assert "1 predictions match no example" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_truth_mismatch_and_no_overlap(data: Path, tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "p.jsonl", [{"id": "dev-u1-d", "rating": 5.0}])
    result = cli("eval", "--data", str(data), "--predictions", str(preds))  # wrong split
    assert result.returncode == 2 and "no prediction matches" in result.stderr
    rows = [{"id": e["id"], "rating": 3.0, "truth": 5.0} for e in SPLITS["test"]]
    mismatch = evaluate(data, write_predictions(tmp_path / "m.jsonl", rows), "test")
    assert mismatch["truth_mismatches"] == 3  # truths are 1, 2 and 4


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "test-u1-e", "rating": 3', "p.jsonl:2: malformed JSON"),
        ('{"id": "test-u1-e", "rating": "4"}', "p.jsonl:2: rating: expected a number or null"),
        ('{"id": "test-u1-e", "rating": true}', "p.jsonl:2: rating: expected a number or null"),
        ('{"id": "test-u1-e"}', "p.jsonl:2: rating: missing required field"),
        ('{"rating": 4}', "p.jsonl:2: id: missing required field"),
    ],
)
def test_eval_malformed_line_exits_2(data: Path, tmp_path: Path, line: str, message: str) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "test-u2-b", "rating": 2}\n' + line + "\n")
    with pytest.raises(InputError) as err:
        evaluate(data, preds)
    assert str(err.value).startswith(str(preds.parent / message))
    if "malformed" in message:  # and once end to end: one line on stderr, exit code 2
        result = cli("eval", "--data", str(data), "--predictions", str(preds))
        assert result.returncode == 2
        assert (
            result.stderr.strip() == f"error: {preds}:2: malformed JSON (Expecting ',' delimiter)"
        )


def test_eval_on_a_folder_without_manifest(tmp_path: Path) -> None:
    preds = write_predictions(tmp_path / "p.jsonl", [{"id": "x", "rating": 1}])
    result = cli("eval", "--data", str(tmp_path), "--predictions", str(preds))
    assert result.returncode == 2 and "manifest.json" in result.stderr


# --- data show ---------------------------------------------------------------------------------


def test_data_show_prints_the_exact_prompt(data: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from recone_lite.prompts import render_prompt

    backend = Tokenizer(models.WordLevel(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path / "tok")
    args = [
        "data",
        "show",
        str(data),
        "--id",
        "test-u1-e",
        "--tokenizer",
        str(tmp_path / "tok"),
        "--template",
        "think",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = render_prompt(SPLITS["test"][0], tokenizer, "think", (1.0, 5.0))
    assert result.stdout == expected.text
    assert f"{expected.n_tokens} prompt tokens" in result.stderr
    small = runner.invoke(app, [*args, "--max-prompt-tokens", str(expected.n_tokens - 1)])
    assert small.exit_code == 0 and "1 history items dropped" in small.stderr
