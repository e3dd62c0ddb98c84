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
    assert set(test) == {"global_mean", "user_mean", "item_mean", "biases", "mf", "knn"}


def als_biases(ratings, epochs=10, reg_u=15.0, reg_i=10.0):
    """mu + b_u + b_i by alternating least squares, written out (scikit-surprise's defaults)."""
    mu = sum(r for _, _, r in ratings) / len(ratings)
    bu = {u: 0.0 for u, _, _ in ratings}
    bi = {i: 0.0 for _, i, _ in ratings}
    for _ in range(epochs):
        for item in bi:
            rows = [(u, r) for u, i, r in ratings if i == item]
            bi[item] = sum(r - mu - bu[u] for u, r in rows) / (reg_i + len(rows))
        for user in bu:
            rows = [(i, r) for u, i, r in ratings if u == user]
            bu[user] = sum(r - mu - bi[i] for i, r in rows) / (reg_u + len(rows))
    return lambda user, item: min(5.0, max(1.0, mu + bu.get(user, 0.0) + bi.get(item, 0.0)))


def test_biases_are_mu_plus_user_and_item_biases_fitted_on_train(data: Path) -> None:
    fitted, note = fit_on_train(data)
    ratings = train_ratings(iter_split(data, "train"))
    expected = als_biases(ratings)
    pairs = [("u1", "a"), ("u1", "e"), ("u2", "b"), ("u3", "a"), ("nobody", "nothing")]
    assert [fitted["biases"](*p) for p in pairs] == pytest.approx([expected(*p) for p in pairs])
    assert fitted["biases"]("nobody", "nothing") == pytest.approx(note["global_mean"])
    again, _ = fit_on_train(data)
    assert [again["biases"](*p) for p in pairs] == [fitted["biases"](*p) for p in pairs]


def test_biases_beat_the_means_on_additive_data() -> None:
    # rating = 3 + user offset + item offset: the biases model is right (up to its shrinkage),
    # each mean sees only half of it
    def rating(u: int, i: int) -> float:
        return 3.0 + (u % 3 - 1) * 0.8 + (i % 5 - 2) * 0.5

    cells = [(u, i) for u in range(30) for i in range(30)]
    ratings = [(f"u{u}", f"i{i}", rating(u, i)) for u, i in cells if (u * 7 + i) % 5]
    held = [(f"u{u}", f"i{i}", rating(u, i)) for u, i in cells if not (u * 7 + i) % 5]
    fitted = fit_baselines(ratings, (1.0, 5.0))

    def mae(name: str) -> float:
        return sum(abs(fitted[name](u, i) - r) for u, i, r in held) / len(held)

    assert mae("biases") < 0.75 * min(mae("user_mean"), mae("item_mean"))


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
    assert "user+item bias" in result.stderr and "biases" in report["splits"]["test"]


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
    # the two examples without a prediction are failures: coverage 1/3, priced as the mean 3.4
    model = report["model"]
    assert (model["n"], model["coverage"], report["subset"]) == (3, 0.3333, None)
    assert report["model"]["mae_with_failures"] == round((1.0 + 1.4 + 0.6) / 3, 4)
    assert report["baselines"]["global_mean"]["n"] == 3  # baselines on the same examples

    part = evaluate(data, preds, "test", subset=True)  # a part of the split on purpose
    assert (part["model"]["n"], part["model"]["coverage"], part["subset"]) == (1, 1.0, "1 of 3")
    assert part["baselines"]["global_mean"]["n"] == 1

    result = cli("eval", "--data", str(data), "--predictions", str(preds), "--strict")
    assert result.returncode == 2 and result.stdout == ""
    assert "2 examples of split 'test' have no prediction" in result.stderr
    assert "1 ids appear more than once" in result.stderr
    assert "1 predictions match no example" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_counts_missing_predictions_unless_subset(data: Path, tmp_path: Path) -> None:
    """Ten of 943 answered must not read as full coverage; --subset says what it scored."""
    preds = write_predictions(tmp_path / "p.jsonl", [{"id": "test-u1-e", "rating": 1.0}])
    whole = cli("eval", "--data", str(data), "--predictions", str(preds))
    assert whole.returncode == 0, whole.stderr
    report = json.loads(whole.stdout)
    assert report["model"]["coverage"] == 0.3333 and report["scored"] == 3
    assert "counted as failures" in whole.stderr and "subset" not in report["model"]
    part = cli("eval", "--data", str(data), "--predictions", str(preds), "--subset")
    assert part.returncode == 0, part.stderr
    report = json.loads(part.stdout)
    assert report["model"]["coverage"] == 1.0 and report["subset"] == "1 of 3"
    assert "subset: 1 of 3" in part.stderr and "counted as failures" not in part.stderr
    strict = cli("eval", "--data", str(data), "--predictions", str(preds), "--strict")
    assert strict.returncode == 2
    assert "2 examples of split 'test' have no prediction" in strict.stderr
    both = cli("eval", "--data", str(data), "--predictions", str(preds), "--subset", "--strict")
    assert both.returncode == 0, both.stderr  # missing ids are the point of --subset


def test_eval_non_utf8_predictions_name_the_line(data: Path, tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(b'{"id": "test-u1-e", "rating": 1}\n{"id": "test-u2-b", "x": "caf\xe9"}\n')
    for args in (["--predictions", str(preds)], ["--predictions", "-"]):
        result = subprocess.run(
            [sys.executable, "-m", "recone_lite", "eval", "--data", str(data), *args],
            input=preds.read_bytes(), capture_output=True,
        )
        stderr = result.stderr.decode()
        assert result.returncode == 2 and result.stdout == b""
        name = args[1]
        assert stderr.startswith(f"error: {name}:2: not valid UTF-8"), stderr
        assert len(stderr.strip().splitlines()) == 1


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
