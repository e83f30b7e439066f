"""Interaction times decide which item is held out: a blank or unreadable time is an input error
naming the file and line, never a silent reorder (text order puts "100" before "99")."""

import csv
from pathlib import Path

import pytest
from cases import cases
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from worker.evaluation.datasets import DataError, load_csv, load_ml1m, parse_columns

COLUMNS = parse_columns("user=uid,item=iid,time=ts,category=kind,group=released")
SETTINGS = cases(60, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(path: Path, times: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uid", "iid", "ts", "kind", "released"])
        for j, t in enumerate(times):
            writer.writerow([f"u{j % 3}", f"i{j}", t, "x" if j % 2 else "y", 1990 + j % 20])


bad_times = st.one_of(
    st.just(""),
    st.just("   "),
    st.text(alphabet="abcxyz-:/ ", min_size=1, max_size=12).filter(lambda t: t.strip() != ""),
    st.sampled_from(["nan", "inf", "12:00", "31/01/2018", "2018-13-01", "1e400"]),
)


@SETTINGS
@given(st.lists(st.integers(0, 10**10), min_size=2, max_size=30), st.data())
def test_a_bad_time_in_a_csv_names_the_file_and_line(tmp_path, good, data):
    at = data.draw(st.integers(0, len(good) - 1))
    bad = data.draw(bad_times)
    times = [str(t) for t in good]
    times[at] = bad
    path = tmp_path / "log.csv"
    _write(path, times)
    with pytest.raises(DataError) as caught:
        load_csv(path, COLUMNS, split_at=2000)
    message = str(caught.value)
    assert f"{path}:{at + 2}:" in message  # the header is line 1
    if not bad.strip():
        assert "blank or missing time" in message
    else:  # text the CSV reader takes for a null marker ("nan", "NA") counts as missing
        assert "neither a number nor an ISO date" in message or "blank or missing time" in message


@SETTINGS
@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=30, unique=True))
def test_numeric_times_sort_as_numbers_not_text(tmp_path, good):
    path = tmp_path / "log.csv"
    _write(path, [str(t) for t in good])
    inter = load_csv(path, COLUMNS, split_at=2000).interactions
    assert sorted(inter.time.tolist()) == sorted(float(t) for t in good)
    assert {inter.item_ids[i]: t for i, t in zip(inter.item, inter.time, strict=True)} == {
        f"i{j}": float(t) for j, t in enumerate(good)
    }


def test_dates_are_read_as_dates_and_a_mixed_column_is_refused(tmp_path):
    path = tmp_path / "log.csv"
    _write(path, ["2018-09-05 19:42:07", "2019-01-02", "2017-03-11T08:30:00"])
    inter = load_csv(path, COLUMNS, split_at=2000).interactions
    by_item = {inter.item_ids[i]: t for i, t in zip(inter.item, inter.time, strict=True)}
    assert by_item["i2"] < by_item["i0"] < by_item["i1"]
    _write(path, ["1536176527", "2019-01-02", "99"])
    with pytest.raises(DataError, match=rf"{path}:3: time '2019-01-02' is a date but earlier rows"):
        load_csv(path, COLUMNS, split_at=2000)


def test_ml1m_bad_timestamp_names_the_line(tmp_path):
    (tmp_path / "movies.dat").write_text(
        "1::Toy Story (1995)::Comedy\n2::Heat (1995)::Action\n", encoding="latin-1"
    )
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n\n1::2::3::\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:3: blank or missing time"):
        load_ml1m(tmp_path)
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n1::2::3::soon\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"ratings\.dat:2: time 'soon'"):
        load_ml1m(tmp_path)
