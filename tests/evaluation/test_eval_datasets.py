"""Loader round trips on small files written in each dataset's published format."""

import csv
from pathlib import Path

import numpy as np
import pytest

from worker.evaluation.datasets import (
    DataError,
    Interactions,
    load,
    load_csv,
    load_douban,
    load_kuairand,
    load_ml1m,
    parse_columns,
    synthetic,
)


def _pairs(ds):
    inter = ds.interactions
    return {
        (inter.user_ids[u], inter.item_ids[i], float(t))
        for u, i, t in zip(inter.user, inter.item, inter.time, strict=True)
    }


def test_ml1m_round_trip(tmp_path: Path):
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Misérables, Les (1995)::Drama|Musical\n"
        "3::Matrix, The (1999)::Action|Sci-Fi|Thriller\n".encode("latin-1")
    )
    (tmp_path / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")
    (tmp_path / "ratings.dat").write_bytes(
        b"1::1::5::978300760\n1::2::3::978302109\n2::3::4::978301968\n2::1::2::978300275\n"
        b"2::99::4::978300000\n"
    )  # movie 99 is not in movies.dat: dropped
    ds = load_ml1m(tmp_path)
    assert _pairs(ds) == {
        ("1", "1", 978300760.0),
        ("1", "2", 978302109.0),
        ("2", "3", 978301968.0),
        ("2", "1", 978300275.0),
    }
    assert ds.items["2"] == {"title": "Misérables, Les", "genre": ["Drama", "Musical"], "year": 1995}
    assert ds.items["3"]["genre"] == ["Action", "Sci-Fi", "Thriller"]
    assert ds.users["1"] == {"gender": "F", "age": "Under 18", "occupation": "K-12 student"}
    assert ds.users["2"] == {"gender": "M", "age": "56+", "occupation": "self-employed"}
    assert ds.aspects == {
        "diversity": {"attribute": "genre"},
        "fairness": {"attribute": "year", "split_at": 1996},
    }


def test_ml1m_missing_files_name_the_fix(tmp_path: Path):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    with pytest.raises(DataError, match=r"ratings\.dat not found.*--data-dir"):
        load_ml1m(tmp_path)
    with pytest.raises(DataError, match="--data-dir"):
        load("ml-1m", None)


def test_ml1m_wrong_format_names_the_line(tmp_path: Path):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    (tmp_path / "ratings.dat").write_text("1,1,5,978300760\n")
    with pytest.raises(DataError, match=r"ratings\.dat:1"):
        load_ml1m(tmp_path)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


LOG_HEADER = [
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
]
VIDEO_HEADER = [
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "visible_status",
    "video_duration",
    "server_width",
    "server_height",
    "music_id",
    "music_type",
    "tag",
]
USER_HEADER = [
    "user_id",
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num",
    "follow_user_num_range",
    "fans_user_num",
    "fans_user_num_range",
    "friend_user_num",
    "friend_user_num_range",
    "register_days",
    "register_days_range",
    "onehot_feat0",
    "onehot_feat1",
]


def _log(user, video, time_ms, click):
    return [user, video, 20220408, 1200, time_ms, click, 0, 0, 0, 0, 0, 1, 5000, 12000, 0, 0, 0, 0, 1]


def test_kuairand_round_trip(tmp_path: Path):
    _write_csv(
        tmp_path / "log_standard_4_08_to_4_21_pure.csv",
        LOG_HEADER,
        [
            _log(0, 10, 1649390000000, 1),
            _log(0, 11, 1649390001000, 0),
            _log(0, 12, 1649390002000, 1),
            _log(1, 10, 1649390003000, 1),
        ],
    )
    _write_csv(tmp_path / "log_standard_4_22_to_5_08_pure.csv", LOG_HEADER, [_log(1, 13, 1650600000000, 1)])
    _write_csv(
        tmp_path / "video_features_basic_pure.csv",
        VIDEO_HEADER,
        [
            [10, 1, "NORMAL", "2022-01-01", "ShortImport", "public", 8000, 720, 1280, 5, 9, "17,28"],
            [11, 1, "NORMAL", "2022-01-02", "Web_ShortImport", "public", 30000, 720, 1280, 5, 9, "8"],
            [12, 2, "AD", "2022-01-03", "LongImport", "public", 60000, 720, 1280, "", "", ""],
            [13, 3, "NORMAL", "2022-01-04", "ShortImport", "public", 20000, 720, 1280, "", "", "3"],
        ],
    )
    _write_csv(
        tmp_path / "user_features_pure.csv",
        USER_HEADER,
        [
            [0, "full_active", 0, 0, 0, 5, "(0,10]", 1, "[1,10)", 0, "0", 100, "61-90", 3, 7],
            [1, "high_active", 0, 0, 1, 50, "(10,50]", 3, "[1,10)", 1, "[1,5)", 400, "181-365", 1, 2],
        ],
    )
    ds = load_kuairand(tmp_path)
    assert _pairs(ds) == {
        ("0", "10", 1649390000000.0),
        ("0", "12", 1649390002000.0),
        ("1", "10", 1649390003000.0),
        ("1", "13", 1650600000000.0),
    }  # clicks only
    assert ds.items["10"] == {
        "video_type": "NORMAL",
        "upload_type": "ShortImport",
        "video_duration": 8000.0,
        "tag": ["17", "28"],
    }
    assert ds.items["12"]["upload_type"] == "LongImport" and "tag" not in ds.items["12"]
    assert "11" not in ds.items  # never clicked
    assert ds.users["1"]["user_active_degree"] == "high_active"
    assert ds.users["1"]["fans_user_num_range"] == "[1,10)"
    # median of the clicked videos' durations 8000, 20000, 60000
    assert ds.aspects == {
        "diversity": {"attribute": "upload_type"},
        "fairness": {"attribute": "video_duration", "split_at": 20000.0},
    }


def test_kuairand_without_logs_names_the_fix(tmp_path: Path):
    _write_csv(tmp_path / "video_features_basic_pure.csv", VIDEO_HEADER, [])
    with pytest.raises(DataError, match="interaction logs"):
        load_kuairand(tmp_path)


MOVIE_HEADER = [
    "MOVIE_ID",
    "NAME",
    "ALIAS",
    "ACTORS",
    "COVER",
    "DIRECTORS",
    "DOUBAN_SCORE",
    "DOUBAN_VOTES",
    "GENRES",
    "IMDB_ID",
    "LANGUAGES",
    "MINS",
    "OFFICIAL_SITE",
    "REGIONS",
    "RELEASE_DATE",
    "SLUG",
    "STORYLINE",
    "TAGS",
    "YEAR",
    "ACTOR_IDS",
    "DIRECTOR_IDS",
]


def _movie(mid, name, genres, languages, year, story="一个故事"):
    return [
        mid,
        name,
        "",
        "演员A/演员B",
        "",
        "导演",
        8.1,
        1000,
        genres,
        "tt0000001",
        languages,
        120,
        "",
        "中国大陆",
        "2001-01-01",
        "x",
        story,
        "tag",
        year,
        "演员A:1|演员B:2",
        "导演:3",
    ]


def test_douban_round_trip(tmp_path: Path):
    _write_csv(
        tmp_path / "movies.csv",
        MOVIE_HEADER,
        [
            _movie(1291546, "霸王别姬", "剧情/爱情/同性", "汉语普通话", 1993, story="第一行\n第二行, 带逗号"),
            _movie(1292052, "肖申克的救赎", "剧情/犯罪", "英语", 1994),
            _movie(1292720, "阿甘正传", "剧情/爱情", "英语/意大利语", 1994),
            _movie(1291561, "千与千寻", "动画/奇幻", "汉语普通话/日语", 2001),
            _movie(1295644, "这个杀手不太冷", "剧情/动作/犯罪", "英语/意大利语/法语", 1994),
        ],
    )
    _write_csv(
        tmp_path / "ratings.csv",
        ["RATING_ID", "USER_MD5", "MOVIE_ID", "RATING", "RATING_TIME"],
        [
            [1, "0ab7e3efacd56983f16503572d2b9915", 1291546, 5, "2018-09-05 19:42:07"],
            [2, "0ab7e3efacd56983f16503572d2b9915", 1292052, 4, "2019-01-02 10:00:00"],
            [3, "84dfd3f91dd85ea105bc74a4f0d7a067", 1292720, 3, "2017-03-11 08:30:00"],
            [4, "84dfd3f91dd85ea105bc74a4f0d7a067", 1291561, 5, "2016-12-31 23:59:59"],
            [5, "84dfd3f91dd85ea105bc74a4f0d7a067", 9999999, 5, "2016-12-31 23:59:59"],
        ],
    )  # unknown movie
    ds = load_douban(tmp_path)
    inter = ds.interactions
    got = {(inter.user_ids[u], inter.item_ids[i]) for u, i in zip(inter.user, inter.item, strict=True)}
    one, two = "0ab7e3efacd56983f16503572d2b9915", "84dfd3f91dd85ea105bc74a4f0d7a067"
    assert got == {(one, "1291546"), (one, "1292052"), (two, "1292720"), (two, "1291561")}
    # date strings keep their order
    first = inter.item_ids.index("1291546")
    second = inter.item_ids.index("1292052")
    assert inter.time[list(inter.item).index(first)] < inter.time[list(inter.item).index(second)]
    assert ds.items["1291546"]["category"] == ["剧情", "爱情", "同性"]
    assert ds.items["1291546"]["title"] == "霸王别姬"
    # English is the most common first language (3 of 5): the two fairness groups
    assert ds.items["1292720"]["language"] == "英语"
    assert ds.items["1292720"]["language_group"] == "英语"
    assert ds.items["1291561"]["language_group"] == "not 英语"
    assert ds.aspects == {"diversity": {"attribute": "category"}, "fairness": {"attribute": "language_group"}}


def test_generic_csv_with_a_column_mapping(tmp_path: Path):
    path = tmp_path / "mine.csv"
    _write_csv(
        path,
        ["uid", "iid", "ts", "clicked", "kind", "released"],
        [
            ["u1", "a", 3, 1, "news|sport", 2001],
            ["u1", "b", 1, 1, "tech", 1990],
            ["u1", "c", 2, 0, "tech", 1995],
            ["u2", "a", 5, 1, "news|sport", 2001],
        ],
    )
    columns = parse_columns("user=uid,item=iid,time=ts,label=clicked,category=kind,group=released")
    ds = load_csv(path, columns, split_at=2000)
    assert _pairs(ds) == {("u1", "a", 3.0), ("u1", "b", 1.0), ("u2", "a", 5.0)}
    assert ds.items["a"] == {"kind": ["news", "sport"], "released": 2001.0}
    assert ds.aspects == {
        "diversity": {"attribute": "kind"},
        "fairness": {"attribute": "released", "split_at": 2000},
    }
    three = tmp_path / "three.csv"
    _write_csv(
        three,
        ["uid", "iid", "kind", "released"],
        [["u1", "a", "x", 2001], ["u1", "b", "y", 1990], ["u2", "c", "x", 1995]],
    )
    with pytest.raises(DataError, match="--split-at"):
        load_csv(three, parse_columns("user=uid,item=iid,category=kind,group=released"))
    with pytest.raises(DataError, match="unknown role"):
        parse_columns("user=uid,colour=red")


def test_interactions_keep_the_first_occurrence_of_a_repeated_pair():
    inter = Interactions.from_columns(["u", "u", "u"], ["a", "b", "a"], np.array([5.0, 1.0, 2.0]))
    pairs = sorted((inter.item_ids[i], t) for i, t in zip(inter.item, inter.time, strict=True))
    assert pairs == [("a", 2.0), ("b", 1.0)]


def test_synthetic_is_seeded_and_has_the_paper_shape():
    a, b, c = synthetic(60, 300, seed=3), synthetic(60, 300, seed=3), synthetic(60, 300, seed=4)
    assert _pairs(a) == _pairs(b) and a.items == b.items and a.users == b.users
    assert _pairs(a) != _pairs(c)
    assert a.interactions.n_users == 60
    assert all(isinstance(f["genre"], list) and f["genre"] for f in a.items.values())
    years = np.array([f["year"] for f in a.items.values()])
    assert 0.05 < np.mean(years >= 1996) < 0.5
    # popularity skew: the most popular tenth of the items holds far more than a tenth of interactions
    counts = np.sort(np.bincount(a.interactions.item, minlength=300))[::-1]
    assert counts[:30].sum() > 0.25 * counts.sum()
    assert set(a.users["u0"]) == {"gender", "age", "occupation"}
