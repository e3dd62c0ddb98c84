"""The `--source` registry: one name per raw format, each mapped to its loader.

A loader is `load(reviews, meta, state) -> Loaded`: it finds the files (a folder is allowed where
the format has fixed file names), sets nothing global, and returns re-startable streams.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recone_lite.data import amazon, movielens, reason4rec, yelp
from recone_lite.data.records import Loaded, ReadState
from recone_lite.errors import InputError

Loader = Callable[[Path | None, Path | None, ReadState], Loaded]

SOURCES: dict[str, tuple[Loader, str]] = {
    "amazon-2023": (amazon.load_2023, "Amazon Reviews 2023 JSONL (+ meta_*.jsonl)"),
    "amazon-2018": (amazon.load_2018, "Amazon Review Data 2018 JSON lines (+ meta_*.json)"),
    "amazon-2014": (amazon.load_2014, "Amazon 2014 reviews (+ meta as Python literals)"),
    "yelp": (yelp.load, "Yelp Open Dataset review.json (+ business.json), or its folder"),
    "movielens": (movielens.load, "MovieLens ml-100k / ml-1m / ml-latest folder or ratings file"),
    "recbole": (movielens.load_recbole, "RecBole atomic NAME.inter (+ NAME.item) or its folder"),
    "recbole-ml-100k": (movielens.load_recbole_ml_100k,
                        "MovieLens-100k from the installed recbole==1.2.1 package; no path"),
    "reason4rec": (reason4rec.load, "Reason4Rec raw_data/*.pkl (needs --allow-pickle)"),
}


def loader(name: str) -> Loader:
    """The loader for a `--source` name; an unknown name lists the valid ones.

    >>> loader("amazon-2023").func.__name__
    '_load'
    >>> loader("amazon")
    Traceback (most recent call last):
    ...
    recone_lite.errors.InputError: --source: unknown source 'amazon'; choose one of amazon-2023, \
amazon-2018, amazon-2014, yelp, movielens, recbole, recbole-ml-100k, reason4rec
    """
    if name not in SOURCES:
        raise InputError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}",
                         field="--source")
    return SOURCES[name][0]
