"""MovieLens (GroupLens) files and RecBole atomic files. No review text: reviews are empty.

| flavour   | ratings file                  | movies file                           | scale |
|-----------|-------------------------------|---------------------------------------|-------|
| ml-100k   | `u.data` (tab separated)      | `u.item` (`|`, genre flags, latin-1)  | 1-5   |
| ml-1m     | `ratings.dat` (`::`)          | `movies.dat` (`id::title::A|B`)       | 1-5   |
| ml-latest | `ratings.csv` (with header)   | `movies.csv` (`movieId,title,genres`) | 0.5-5 |
| RecBole   | `NAME.inter` (typed header)   | `NAME.item`                           | 1-5   |

A RecBole header names typed columns: `user_id:token  item_id:token  rating:float
timestamp:float` (tab separated; other columns are ignored, `review` is used when present).

`--reviews` may be the folder or the ratings file; the movies file beside it is used unless
`--meta` names another. MovieLens's terms forbid redistribution, so recone-lite never ships it:
`--source recbole-ml-100k` reads the copy inside the installed `recbole` package.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from recone_lite.data.readers import iter_lines
from recone_lite.data.records import Interaction, Loaded, Meta, ReadState, meta, no_meta, short
from recone_lite.errors import InputError

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
# ratings file -> (separator, has a header, movies file, scale)
FLAVOURS = {
    "u.data": ("\t", False, "u.item", (1.0, 5.0)),
    "ratings.dat": ("::", False, "movies.dat", (1.0, 5.0)),
    "ratings.csv": (",", True, "movies.csv", (0.5, 5.0)),
}
COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def _ratings(path: Path, state: ReadState, sep: str, header: bool) -> Iterator[Interaction]:
    first = header
    for line in iter_lines(path, state):
        if first:
            first = False
            continue
        parts = line.decode("utf-8", errors="replace").strip().split(sep)
        if len(parts) < 4:
            state.bad("missing_field", f"expected 4 columns, found {len(parts)}",
                      COLUMNS[len(parts)])
            continue
        user, item = parts[0].strip(), parts[1].strip()
        rating = state.rating(parts[2], "rating")
        seconds = state.timestamp(parts[3], "timestamp")
        if rating is None or seconds is None:
            continue
        if not user or not item:
            state.bad("missing_field", "missing required field",
                      "user_id" if not user else "item_id")
            continue
        yield Interaction(user, item, rating, seconds, "")


def movie_meta(title: str, genres: list[str]) -> Meta:
    """Meta of a movie; MovieLens's placeholder genres are dropped.

    >>> movie_meta("Toy Story (1995)", ["Animation", "(no genres listed)", "unknown"])
    {'title': 'Toy Story (1995)', 'categories': ['Animation']}
    """
    genres = [g for g in genres if g and g not in ("(no genres listed)", "unknown")]
    return meta(title=short(title), categories=genres)


def _movies(path: Path, state: ReadState, name: str) -> Iterator[tuple[str, Meta]]:
    first = name == "movies.csv"
    for line in iter_lines(path, state):
        if first:
            first = False
            continue
        if name == "u.item":
            parts = line.decode("latin-1").rstrip("\r").split("|")
            flags = parts[5:5 + len(GENRES_100K)]
            genres = [g for g, flag in zip(GENRES_100K, flags, strict=False) if flag.strip() == "1"]
        elif name == "movies.dat":
            parts = line.decode("latin-1").rstrip("\r").split("::")
            genres = parts[2].split("|") if len(parts) > 2 else []
        else:
            parts = next(csv.reader([line.decode("utf-8", errors="replace")]))
            genres = parts[2].split("|") if len(parts) > 2 else []
        if len(parts) < 2 or not parts[0].strip():
            state.bad("missing_field", "expected an id and a title", "title")
            continue
        yield parts[0].strip(), movie_meta(parts[1], genres)


def _ratings_file(reviews: Path, known: tuple[str, ...], what: str) -> Path:
    if reviews.is_dir():
        for name in known:
            if (reviews / name).is_file():
                return reviews / name
        raise InputError(f"no {what} file ({', '.join(known)}) in this folder", path=reviews)
    return reviews


def load(reviews: Path | None, meta_path: Path | None, state: ReadState) -> Loaded:
    """MovieLens ml-100k, ml-1m or ml-latest(-small), told apart by the ratings file's name."""
    if reviews is None:
        raise InputError("--source movielens needs --reviews PATH (the folder or its ratings file)")
    reviews = _ratings_file(reviews, tuple(FLAVOURS), "MovieLens ratings")
    if reviews.name not in FLAVOURS:
        raise InputError(f"not a MovieLens ratings file; expected one of {', '.join(FLAVOURS)}",
                         path=reviews)
    sep, header, movies, scale = FLAVOURS[reviews.name]
    if meta_path is None and (reviews.parent / movies).is_file():
        meta_path = reviews.parent / movies
    return Loaded(
        interactions=partial(_ratings, reviews, state, sep, header),
        meta=partial(_movies, meta_path, state, meta_path.name if meta_path.name in (
            "u.item", "movies.dat") else "movies.csv") if meta_path else no_meta,
        scale=scale,
    )


# --- RecBole atomic files ----------------------------------------------------------------------

TITLE_FIELDS = ("movie_title", "title", "name", "item_name")
CATEGORY_FIELDS = ("class", "genre", "genres", "categories", "category")


def _header(line: bytes) -> list[str]:
    """Field names of a RecBole header, types dropped.

    >>> _header(b"user_id:token\\titem_id:token\\trating:float\\ttimestamp:float")
    ['user_id', 'item_id', 'rating', 'timestamp']
    """
    return [name.split(":")[0].strip() for name in line.decode("utf-8").rstrip("\r").split("\t")]


def _inter(path: Path, state: ReadState) -> Iterator[Interaction]:
    lines = iter_lines(path, state)
    names = _header(next(lines))
    for needed in COLUMNS:
        if needed not in names:
            raise InputError(f"the header has no '{needed}' column (it has {', '.join(names)})",
                             path=path, line=state.line, field=needed)
    user, item, rating, time = (names.index(name) for name in COLUMNS)
    review = next((names.index(n) for n in ("review", "text", "review_text") if n in names), None)
    width = max(user, item, rating, time) + 1
    for line in lines:
        parts = line.decode("utf-8", errors="replace").rstrip("\r").split("\t")
        if len(parts) < width:
            state.bad("missing_field", f"expected {len(names)} columns, found {len(parts)}",
                      names[len(parts)])
            continue
        value = state.rating(parts[rating], "rating")
        seconds = state.timestamp(parts[time], "timestamp")
        if value is None or seconds is None:
            continue
        text = parts[review] if review is not None and review < len(parts) else ""
        yield Interaction(parts[user], parts[item], value, seconds, text)


def _items(path: Path, state: ReadState) -> Iterator[tuple[str, Meta]]:
    lines = iter_lines(path, state)
    names = _header(next(lines))
    if "item_id" not in names:
        raise InputError("the header has no 'item_id' column", path=path, line=1, field="item_id")
    for line in lines:
        values = line.decode("utf-8", errors="replace").rstrip("\r").split("\t")
        row = dict(zip(names, values, strict=False))
        fields: Meta = {}
        for name, value in row.items():
            if name == "item_id" or not value.strip():
                continue
            if name in TITLE_FIELDS:
                fields.setdefault("title", short(value))
            elif name in CATEGORY_FIELDS:
                fields.setdefault("categories", value.split())
            else:
                fields[name.removeprefix("release_")] = short(value)
        fields = {"title": fields.pop("title", ""), "categories": fields.pop("categories", []),
                  **fields}
        yield row.get("item_id", ""), meta(**fields)


def load_recbole(reviews: Path | None, meta_path: Path | None, state: ReadState) -> Loaded:
    """RecBole atomic files: `NAME.inter` and, beside it, `NAME.item`."""
    if reviews is None:
        raise InputError("--source recbole needs --reviews PATH (a .inter file or its folder)")
    if reviews.is_dir():
        found = sorted(reviews.glob("*.inter"))
        if len(found) != 1:
            raise InputError(f"expected one .inter file in this folder, found {len(found)}",
                             path=reviews)
        reviews = found[0]
    if meta_path is None and reviews.with_suffix(".item").is_file():
        meta_path = reviews.with_suffix(".item")
    return Loaded(interactions=partial(_inter, reviews, state),
                  meta=partial(_items, meta_path, state) if meta_path else no_meta,
                  scale=(1.0, 5.0))


def recbole_ml_100k() -> Path:
    """The ml-100k folder shipped inside the installed `recbole` package (not imported: heavy)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the recbole package is not installed; run "
                         "`pip install --no-deps recbole==1.2.1` (it ships MovieLens-100k)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise InputError("the installed recbole package has no ml-100k example data", path=folder)
    return folder


def load_recbole_ml_100k(reviews: Path | None, meta_path: Path | None, state: ReadState) -> Loaded:
    """MovieLens-100k from the installed recbole==1.2.1 package; needs no path."""
    if reviews is not None or meta_path is not None:
        raise InputError("--source recbole-ml-100k reads the installed recbole package; "
                         "drop --reviews/--meta (or use --source recbole with your files)")
    return load_recbole(recbole_ml_100k() / "ml-100k.inter", None, state)
