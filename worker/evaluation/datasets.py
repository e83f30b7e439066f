"""Datasets for evaluation: loaders for files a user already has, and a seeded synthetic generator.

The project never downloads data. Each loader reads a dataset in its published format and maps its
attributes to the aspects the paper uses: ML-1M genre (diversity) and year before/after 1996
(fairness); KuaiRand upload_type and video_duration; Douban-Movie category (genre) and language.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from ..schemas import FeatureValue, Scalar

Features = dict[str, FeatureValue]


class DataError(ValueError):
    """Input data that cannot be used; the message names the file or option to fix."""


@dataclass
class Interactions:
    """Implicit feedback as index arrays: one row per (user, item), first occurrence kept."""

    user_ids: list[str]
    item_ids: list[str]
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray

    @classmethod
    def from_columns(cls, users: Sequence[str], items: Sequence[str], times: np.ndarray) -> Interactions:
        """Index the columns; a repeated (user, item) keeps its earliest time so no item is both
        a training interaction and a held-out positive."""
        if len(users) == 0:
            raise DataError("no interactions left after reading the data")
        user_ids, user = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
        item_ids, item = np.unique(np.asarray(items, dtype=object).astype(str), return_inverse=True)
        times = np.asarray(times, dtype=np.float64)
        order = np.lexsort((np.arange(len(times)), times))
        pair = user[order].astype(np.int64) * len(item_ids) + item[order]
        _, first = np.unique(pair, return_index=True)
        keep = np.sort(order[first])
        return cls(
            [str(u) for u in user_ids],
            [str(i) for i in item_ids],
            user[keep].astype(np.int64),
            item[keep].astype(np.int64),
            times[keep],
        )

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass
class Dataset:
    """Interactions plus the features requests show, and the aspects the paper evaluates."""

    name: str
    interactions: Interactions
    items: dict[str, Features]
    users: dict[str, Features]
    aspects: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def category_attribute(self) -> str:
        return str(self.aspects["diversity"]["attribute"])


# ---------------------------------------------------------------- ML-1M (.dat, latin-1, "::")

ML_AGES = {
    "1": "Under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
ML_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]
_TITLE_YEAR = re.compile(r"^(.*)\s\((\d{4})\)\s*$")


def _dat_rows(path: Path, fields: int, numbered: bool = False) -> list[Any]:
    """The '::'-separated rows of a .dat file (with their line numbers when `numbered`)."""
    rows: list[Any] = []
    with path.open(encoding="latin-1") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != fields:
                raise DataError(
                    f"{path}:{number}: expected {fields} '::'-separated fields, "
                    f"found {len(parts)}; is this the ML-1M file?"
                )
            rows.append((number, parts) if numbered else parts)
    return rows


def _require(folder: Path, *names: str) -> None:
    if not folder.is_dir():
        raise DataError(f"--data-dir {folder} is not a folder; point it at the dataset's files")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{', '.join(missing)} not found in {folder}; point --data-dir at the folder "
            "holding the dataset's files (the project never downloads data)"
        )


def load_ml1m(folder: Path) -> Dataset:
    """ML-1M from ratings.dat, movies.dat and (optionally) users.dat; every rating is a positive."""
    _require(folder, "ratings.dat", "movies.dat")
    items: dict[str, Features] = {}
    for movie_id, title, genres in _dat_rows(folder / "movies.dat", 3):
        match = _TITLE_YEAR.match(title)
        features: Features = {
            "title": match.group(1) if match else title,
            "genre": [g for g in genres.split("|") if g],
        }
        if match:
            features["year"] = int(match.group(2))
        items[movie_id] = features
    users: dict[str, Features] = {}
    if (folder / "users.dat").is_file():
        for user_id, gender, age, occupation, _zip in _dat_rows(folder / "users.dat", 5):
            occ = int(occupation) if occupation.isdigit() else -1
            job = ML_OCCUPATIONS[occ] if 0 <= occ < len(ML_OCCUPATIONS) else occupation
            users[user_id] = {"gender": gender, "age": ML_AGES.get(age, age), "occupation": job}
    numbered = _dat_rows(folder / "ratings.dat", 4, numbered=True)
    kept = [(n, r) for n, r in numbered if r[1] in items]
    rows = [r for _, r in kept]
    times = _time_key([r[3] for r in rows], folder / "ratings.dat", lines=[n for n, _ in kept])
    inter = Interactions.from_columns([r[0] for r in rows], [r[1] for r in rows], times)
    return Dataset(
        "ml-1m",
        inter,
        items,
        users,
        {"diversity": {"attribute": "genre"}, "fairness": {"attribute": "year", "split_at": 1996}},
        ["every rating counts as a positive interaction (implicit feedback)"],
    )


# ---------------------------------------------------------------- CSV helpers (pyarrow)


def _read_csv(path: Path, multiline: bool = False, keep: set[str] | None = None) -> dict[str, list[Any]]:
    """A CSV as columns of Python values, every column read as text (ids keep leading zeros);
    `keep` (lower-case names) limits the columns converted, for large logs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataError(f"{path}: empty file; expected a header row")
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=multiline),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header},
                strings_can_be_null=True,
                include_columns=[h for h in header if keep is None or h.strip().lower() in keep],
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    return {name.strip().lstrip("\ufeff"): table.column(name).to_pylist() for name in table.column_names}


@overload
def _column(table: dict[str, list[Any]], path: Path, *aliases: str, required: Literal[True] = ...) -> str: ...
@overload
def _column(table: dict[str, list[Any]], path: Path, *aliases: str, required: bool) -> str | None: ...
def _column(table: dict[str, list[Any]], path: Path, *aliases: str, required: bool = True) -> str | None:
    lower = {name.lower(): name for name in table}
    for alias in aliases:
        if alias.lower() in lower:
            return lower[alias.lower()]
    if required:
        raise DataError(f"{path}: no column named {' or '.join(aliases)} (columns: {', '.join(table)})")
    return None


def _time_key(
    values: Sequence[Any], path: Path, rows: Sequence[int] | None = None, lines: Sequence[int] | None = None
) -> np.ndarray:
    """Times as sortable numbers: a column of numbers, or a column of ISO dates ("2018-01-31" or
    "2018-01-31 12:00:00") as POSIX seconds. A blank time, text that is neither, or a column that
    mixes numbers and dates is an input error naming the file and line: sorting such a column would
    silently decide which interaction is held out. `rows` are the values' 0-based data rows in a CSV
    (line = row + 2, after the header); `lines` give the lines directly."""

    def where(j: int) -> str:
        if lines is not None:
            return f"{path}:{lines[j]}"
        return f"{path}:{(rows[j] if rows is not None else j) + 2}"

    try:  # the common case, fast: a column of numbers
        fast = np.asarray(values, dtype=np.float64)
        if np.isfinite(fast).all():
            return fast
    except (TypeError, ValueError):
        pass
    numbers = np.empty(len(values), dtype=np.float64)
    kind: str | None = None
    for j, value in enumerate(values):
        text = "" if value is None else str(value).strip()
        if not text:
            raise DataError(
                f"{where(j)}: blank or missing time (empty, or a null marker such as NA); "
                "every interaction needs a time (a number or an ISO date), or drop the time "
                "column to keep the file order"
            )
        try:
            number, found = float(text), "number"
            if not math.isfinite(number):
                raise ValueError(text)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(text)
            except ValueError:
                raise DataError(
                    f"{where(j)}: time {text!r} is neither a number nor an ISO date "
                    "(e.g. 2018-01-31 12:00:00)"
                ) from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            number, found = stamp.timestamp(), "date"
        if kind is None:
            kind = found
        elif found != kind:
            raise DataError(
                f"{where(j)}: time {text!r} is a {found} but earlier rows hold {kind}s; "
                "one time column needs one format"
            )
        numbers[j] = number
    return numbers


def _split(value: Any, seps: str = "/|") -> list[Scalar]:
    if value is None:
        return []
    return [p.strip() for p in re.split(f"[{re.escape(seps)}]", str(value)) if p.strip()]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _one(folder: Path, pattern: str, what: str, required: bool = True) -> list[Path]:
    found = sorted(folder.glob(pattern))
    if not found and required:
        raise DataError(
            f"no {what} ({pattern}) in {folder}; point --data-dir at the folder holding "
            "the dataset's CSV files (the project never downloads data)"
        )
    return found


# ---------------------------------------------------------------- KuaiRand (CSV)


def load_kuairand(folder: Path) -> Dataset:
    """KuaiRand (Pure, 1K or 27K): log_standard_*.csv interactions (is_click = 1 is a positive),
    video_features_basic_*.csv for upload_type (diversity) and video_duration (fairness, split at
    the median over items), user_features_*.csv if present."""
    if not folder.is_dir():
        raise DataError(f"--data-dir {folder} is not a folder; point it at the KuaiRand data folder")
    logs = _one(folder, "log_standard*.csv", "interaction logs", required=False) or _one(
        folder, "log_*.csv", "interaction logs"
    )
    video_files = _one(folder, "video_features_basic*.csv", "video features")
    log_users: list[str] = []
    log_items: list[str] = []
    times: list[Any] = []
    for log in logs:
        table = _read_csv(log, keep={"user_id", "video_id", "time_ms", "timestamp", "is_click", "click"})
        u = _column(table, log, "user_id")
        v = _column(table, log, "video_id")
        t = _column(table, log, "time_ms", "timestamp", required=False)
        c = _column(table, log, "is_click", "click", required=False)
        keep = [i for i in range(len(table[u])) if c is None or str(table[c][i]).strip() in ("1", "1.0")]
        log_users += [table[u][i] for i in keep]
        log_items += [table[v][i] for i in keep]
        times += (
            _time_key([table[t][i] for i in keep], log, keep).tolist()
            if t
            else [float(len(times) + j) for j in range(len(keep))]
        )
    clicked = {str(v) for v in log_items}
    items: dict[str, Features] = {}
    for path in video_files:
        table = _read_csv(
            path, keep={"video_id", "upload_type", "video_duration", "duration_ms", "video_type", "tag"}
        )
        vid = _column(table, path, "video_id")
        up = _column(table, path, "upload_type")
        dur = _column(table, path, "video_duration", "duration_ms")
        vtype = _column(table, path, "video_type", required=False)
        tag = _column(table, path, "tag", required=False)
        for i, video in enumerate(table[vid]):
            if str(video) not in clicked:
                continue
            features: Features = {}
            if vtype and table[vtype][i]:
                features["video_type"] = table[vtype][i]
            features["upload_type"] = table[up][i]
            duration = _number(table[dur][i])
            features["video_duration"] = duration
            if tag and table[tag][i]:
                features["tag"] = _split(table[tag][i], ",")
            items[str(video)] = features
    rows = [i for i, item in enumerate(log_items) if str(item) in items]
    inter = Interactions.from_columns(
        [log_users[i] for i in rows],
        [log_items[i] for i in rows],
        np.asarray([times[i] for i in rows], dtype=np.float64),
    )
    durations = [f["video_duration"] for f in items.values() if f.get("video_duration") is not None]
    split = float(np.median(np.asarray(durations, dtype=float))) if durations else 0.0
    users: dict[str, Features] = {}
    for path in _one(folder, "user_features*.csv", "user features", required=False):
        table = _read_csv(path)
        uid = _column(table, path, "user_id")
        wanted = [
            c
            for c in (
                "user_active_degree",
                "is_video_author",
                "follow_user_num_range",
                "fans_user_num_range",
                "register_days_range",
            )
            if c in table
        ]
        for i, user in enumerate(table[uid]):
            users[str(user)] = {c: table[c][i] for c in wanted if table[c][i] not in (None, "")}
    return Dataset(
        "kuairand",
        inter,
        items,
        users,
        {
            "diversity": {"attribute": "upload_type"},
            "fairness": {"attribute": "video_duration", "split_at": split},
        },
        [
            "positives are is_click = 1 rows of the standard logs",
            f"fairness groups: video_duration below / at or above the item median {split:g} ms",
        ],
    )


# ---------------------------------------------------------------- Douban-Movie (CSV)


def load_douban(folder: Path) -> Dataset:
    """Douban-Movie (the moviedata CSV export): ratings.csv (USER_ID or USER_MD5, MOVIE_ID, RATING,
    RATING_TIME) and movies.csv (MOVIE_ID, NAME, GENRES, LANGUAGES, YEAR; lists split on / or |).
    Category = GENRES (diversity); fairness groups by language: the most common first language
    against all others, since MAD compares two groups."""
    _require(folder, "ratings.csv", "movies.csv")
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    movies = _read_csv(movies_path, multiline=True)
    mid = _column(movies, movies_path, "MOVIE_ID", "movie_id", "item_id")
    genres = _column(movies, movies_path, "GENRES", "genre", "category")
    langs = _column(movies, movies_path, "LANGUAGES", "language")
    name = _column(movies, movies_path, "NAME", "title", required=False)
    year = _column(movies, movies_path, "YEAR", required=False)
    first_language = {str(m): (_split(movies[langs][i]) or [None])[0] for i, m in enumerate(movies[mid])}
    counts = Counter(v for v in first_language.values() if v)
    if not counts:
        raise DataError(f"{movies_path}: the LANGUAGES column is empty; fairness needs a language")
    top = counts.most_common(1)[0][0]
    items: dict[str, Features] = {}
    for i, movie in enumerate(movies[mid]):
        features: Features = {}
        if name and movies[name][i]:
            features["title"] = movies[name][i]
        features["category"] = _split(movies[genres][i])
        lang = first_language[str(movie)]
        features["language"] = lang
        features["language_group"] = None if lang is None else (top if lang == top else f"not {top}")
        y = _number(movies[year][i]) if year else None
        if y:
            features["year"] = int(y)
        items[str(movie)] = features
    ratings = _read_csv(ratings_path)
    uid = _column(ratings, ratings_path, "USER_ID", "USER_MD5", "user_id", "userid")
    rid = _column(ratings, ratings_path, "MOVIE_ID", "movie_id", "item_id")
    tcol = _column(ratings, ratings_path, "RATING_TIME", "timestamp", "time", required=False)
    rows = [i for i, m in enumerate(ratings[rid]) if str(m) in items and ratings[uid][i]]
    times = (
        _time_key([ratings[tcol][i] for i in rows], ratings_path, rows)
        if tcol
        else np.arange(len(rows), dtype=float)
    )
    inter = Interactions.from_columns([ratings[uid][i] for i in rows], [ratings[rid][i] for i in rows], times)
    return Dataset(
        "douban",
        inter,
        items,
        {},
        {"diversity": {"attribute": "category"}, "fairness": {"attribute": "language_group"}},
        [
            "every rating counts as a positive interaction (implicit feedback)",
            f"fairness groups: first language {top!r} against all other languages",
        ],
    )


# ---------------------------------------------------------------- a user's own CSV


def parse_columns(spec: str) -> dict[str, str]:
    """`user=uid,item=iid,time=ts,category=genre,group=year,label=clicked` to a role -> column map."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        role, sep, column = part.partition("=")
        if not sep or not column.strip():
            raise DataError(f"--columns: {part!r} is not role=column")
        out[role.strip()] = column.strip()
    unknown = set(out) - {"user", "item", "time", "label", "category", "group"}
    if unknown:
        raise DataError(
            f"--columns: unknown role(s) {sorted(unknown)}; use user, item, time, label, category, group"
        )
    return out


def load_csv(path: Path, columns: dict[str, str], split_at: float | None = None) -> Dataset:
    """One interactions CSV with item attributes in its columns. Roles: user and item (required),
    time (else file order), label (rows with label <= 0 dropped), category (diversity; lists split on
    | or /), group (fairness; numeric values need `split_at`, else two distinct values expected)."""
    if path.is_dir():
        path = path / "interactions.csv"
    if not path.is_file():
        raise DataError(f"{path} not found; point --data-dir at your interactions CSV")
    table = _read_csv(path)
    role = {r: _column(table, path, c) for r, c in columns.items()}
    for needed in ("user", "item", "category", "group"):
        if needed not in role:
            raise DataError(f"--columns needs {needed}=<column> for the CSV dataset")
    n = len(table[role["user"]])
    rows = list(range(n))
    if "label" in role:
        rows = [i for i in rows if (_number(table[role["label"]][i]) or 0.0) > 0]
    times = (
        _time_key([table[role["time"]][i] for i in rows], path, rows)
        if "time" in role
        else np.arange(len(rows), dtype=float)
    )
    items: dict[str, Features] = {}
    cat_name, group_name = columns["category"], columns["group"]
    for i in rows:
        item = str(table[role["item"]][i])
        if item in items:
            continue
        group_value: FeatureValue = table[role["group"]][i]
        if split_at is not None:
            group_value = _number(group_value)
        items[item] = {cat_name: _split(table[role["category"]][i]), group_name: group_value}
    inter = Interactions.from_columns(
        [table[role["user"]][i] for i in rows], [table[role["item"]][i] for i in rows], times
    )
    fairness: dict[str, Any] = {"attribute": group_name}
    if split_at is not None:
        fairness["split_at"] = split_at
    else:
        values = {f[group_name] for f in items.values() if f[group_name] is not None}
        if len(values) != 2:
            raise DataError(
                f"the group column {group_name!r} has {len(values)} distinct values; MAD "
                "compares two groups: pass --split-at for a numeric column"
            )
    return Dataset(
        f"csv:{path.name}",
        inter,
        items,
        {},
        {"diversity": {"attribute": cat_name}, "fairness": fairness},
        ["interactions and item attributes from one CSV"],
    )


# ---------------------------------------------------------------- synthetic

SYNTH_GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Musical",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
]


def synthetic(
    n_users: int = 60, n_items: int = 300, seed: int = 0, mean_interactions: int = 30, dim: int = 8
) -> Dataset:
    """A seeded dataset with ML-1M's shape: users with features and a taste (latent vector built from
    favourite genres), items with genres and a year (fairness split at 1996), Zipf popularity that
    favours recent items (so the upstream order is unfair), interactions drawn from taste x popularity.
    """
    rng = np.random.default_rng(seed)
    n_genres = len(SYNTH_GENRES)
    genre_vec = rng.normal(size=(n_genres, dim))
    genre_share = rng.dirichlet(np.full(n_genres, 2.0))
    primary = rng.choice(n_genres, size=n_items, p=genre_share)
    second = np.where(rng.random(n_items) < 0.4, rng.integers(0, n_genres, n_items), -1)
    latent = 0.9 * genre_vec[primary] + 0.5 * rng.normal(size=(n_items, dim))
    latent[second >= 0] += 0.4 * genre_vec[second[second >= 0]]
    years = rng.integers(1970, 2001, size=n_items)
    popularity = (1.0 + rng.permutation(n_items)) ** -0.8
    popularity *= np.where(years >= 1996, 3.0, 1.0)
    items: dict[str, Features] = {}
    for i in range(n_items):
        genres = [SYNTH_GENRES[primary[i]]]
        if second[i] >= 0 and second[i] != primary[i]:
            genres.append(SYNTH_GENRES[second[i]])
        items[f"i{i}"] = {"title": f"Movie {i}", "genre": genres, "year": int(years[i])}
    users: dict[str, Features] = {}
    us: list[str] = []
    its: list[str] = []
    ts: list[float] = []
    clock = 0.0
    for u in range(n_users):
        favourite = rng.choice(n_genres, size=2, replace=False, p=genre_share)
        taste = genre_vec[favourite].mean(axis=0) + 0.5 * rng.normal(size=dim)
        users[f"u{u}"] = {
            "gender": str(rng.choice(["F", "M"])),
            "age": str(rng.choice(list(ML_AGES.values()))),
            "occupation": str(rng.choice(ML_OCCUPATIONS)),
        }
        count = int(np.clip(rng.poisson(mean_interactions), 5, n_items // 3))
        logits = 1.5 * latent @ taste / np.sqrt(dim) + np.log(popularity)
        chosen = np.argsort(-(logits + rng.gumbel(size=n_items)))[:count]
        rng.shuffle(chosen)
        for item in chosen:
            clock += float(rng.integers(1, 600))
            us.append(f"u{u}")
            its.append(f"i{item}")
            ts.append(clock)
    inter = Interactions.from_columns(us, its, np.array(ts))
    return Dataset(
        "synthetic",
        inter,
        items,
        users,
        {"diversity": {"attribute": "genre"}, "fairness": {"attribute": "year", "split_at": 1996}},
        [f"SYNTHETIC data: {n_users} users x {n_items} items, seed {seed}, generated, not real"],
    )


def load(
    name: str,
    data_dir: Path | None,
    *,
    users: int = 60,
    items: int = 300,
    seed: int = 0,
    columns: str = "",
    split_at: float | None = None,
) -> Dataset:
    """Dispatch `--dataset`; a missing --data-dir for a real dataset is a DataError naming the fix."""
    if name == "synthetic":
        return synthetic(n_users=users, n_items=items, seed=seed)
    if data_dir is None:
        raise DataError(
            f"--dataset {name} reads files you already have: pass --data-dir "
            "(the project never downloads data), or use --dataset synthetic"
        )
    if name == "ml-1m":
        return load_ml1m(data_dir)
    if name == "kuairand":
        return load_kuairand(data_dir)
    if name == "douban":
        return load_douban(data_dir)
    if name == "csv":
        return load_csv(data_dir, parse_columns(columns), split_at)
    raise DataError(f"--dataset {name!r} unknown; use synthetic, ml-1m, kuairand, douban or csv")
