"""Time partitions and retention on real PostgreSQL: partitions created ahead, rows of the default
partition moved out, old partitions exported to Parquet and dropped whole (newer sessions intact
through the audit queries), a re-run after a crash between export and drop, one session per
request_id with two workers receiving at once, a duplicate arriving after retention, and prompt
parts: exported with their steps, deleted once no kept step can refer to them, kept otherwise."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text
from stream_helpers import make_requests

import worker.store.store as store_module
from worker.audit.queries import TraceQueries
from worker.engine.steps import LLMCall, StepRecord
from worker.schemas import RerankRequest, RerankResult, Usage
from worker.store.partitions import ensure_ahead, ensure_partitions, floor, partitions
from worker.store.parts import join_calls, part_hash, store_parts
from worker.store.retention import parse_age, retain
from worker.store.store import Store
from worker.store.tables import prompt_parts, sessions, steps

pytestmark = pytest.mark.integration
OLD_DAYS = 40
FORMAT = {"type": "json_schema", "json_schema": {"name": "ranking"}}  # shared by every session


@pytest.fixture
def db(fresh_database):
    with fresh_database("llm4rerank_test_retention") as (_, url):
        yield url


@pytest.fixture
async def store(db: str):
    s = Store(db)
    yield s
    await s.close()


def _requests(n: int, prefix: str, seed: int = 7) -> list[RerankRequest]:
    return [RerankRequest.model_validate(r) for r in make_requests(n, seed=seed, prefix=prefix)]


def _system(request: RerankRequest) -> dict[str, str]:
    return {"role": "system", "content": f"Rerank for {request.user.user_id}: {request.goal}"}


def _calls(request: RerankRequest, step: int) -> list[LLMCall]:
    """A call as the walk records it: the session's own system message, the shared format."""
    messages = [_system(request), {"role": "user", "content": f"step {step}"}]
    return [LLMCall(messages=messages, response_format=FORMAT, raw="{}", prompt_tokens=9)]


async def _walk(store: Store, request: RerankRequest, n_steps: int = 2) -> None:
    """What a worker stores for one request: the session, its steps (with calls), its result."""
    await store.receive([(request, None)])
    claim = await store.claim(request.request_id, "w1", 30)
    assert claim is not None
    ranking = [c.item_id for c in request.candidates]
    await store.add_steps(
        [
            (
                claim.session_id,
                StepRecord(
                    step=i + 1,
                    node="accuracy",
                    policy="llm",
                    ranking=ranking,
                    next_node="stop",
                    calls=_calls(request, i + 1),
                ),
            )
            for i in range(n_steps)
        ]
    )
    result = RerankResult(
        request_id=request.request_id,
        status="ok",
        ranking=ranking,
        path=["accuracy", "stop"],
        llm_calls=n_steps,
        usage=Usage(),
        model="m",
        prompt_version="p",
        latency_ms=1,
        reason=None,
        completed_at=store_module.utcnow(),
    )
    assert await store.complete(claim.session_id, "w1", result)


async def _walk_at(monkeypatch, store: Store, requests: list[RerankRequest], when: datetime) -> None:
    """Sessions stored as if received at `when` (the store's clock moved, nothing else)."""
    monkeypatch.setattr(store_module, "utcnow", lambda: when)
    try:
        for request in requests:
            await _walk(store, request)
    finally:
        monkeypatch.undo()


async def _rows(store: Store, request_ids: list[str]) -> tuple[list[dict], list[dict]]:
    async with store.engine.connect() as conn:
        s = [
            dict(r)
            for r in (
                await conn.execute(
                    select(sessions).where(sessions.c.request_id.in_(request_ids)).order_by(sessions.c.id)
                )
            ).mappings()
        ]
        st = [
            dict(r)
            for r in (
                await conn.execute(
                    select(steps).where(steps.c.session_id.in_([r["id"] for r in s])).order_by(steps.c.id)
                )
            ).mappings()
        ]
    return s, st


def _same(db_rows: list[dict], parquet_rows: list[dict]) -> None:
    """Parquet keeps JSON as its text: parse it back, then every column of every row is equal."""
    assert len(db_rows) == len(parquet_rows)
    for mine, theirs in zip(db_rows, parquet_rows, strict=True):
        assert set(theirs) == set(mine)
        for key, value in mine.items():
            got = theirs[key]
            if isinstance(value, dict | list):
                got = orjson.loads(got)
            assert got == value, key


async def _partition_names(store: Store) -> list[str]:
    async with store.engine.begin() as conn:
        return [p.name for p in await conn.run_sync(partitions)]


def test_ages_parse() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age(" 12h") == timedelta(hours=12)
    assert parse_age("2w") == timedelta(weeks=2)
    for bad in ("30", "d", "-1d", "1y", "1.5d"):
        with pytest.raises(ValueError):
            parse_age(bad)


async def test_partitions_are_created_ahead_and_the_default_partition_is_emptied(
    store: Store, monkeypatch
) -> None:
    now = datetime.now(UTC)
    async with store.engine.begin() as conn:
        parts = await conn.run_sync(partitions)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert parts[0].lower <= now < parts[0].upper
    assert parts[-1].upper >= today + timedelta(days=8), "a week ahead after `db upgrade`"
    assert await ensure_ahead(store.engine, "day", 7) == []  # idempotent

    # a month ahead in monthly ranges: only ranges no daily partition overlaps are added
    async with store.engine.begin() as conn:
        created = await conn.run_sync(ensure_partitions, "month", 3)
    assert created and all(len(name) == len("sessions_p202601") for name in created)

    # a row no range covers lands in the default partition; the next ensure moves it out
    far = today - timedelta(days=400)
    request = _requests(1, "stray")[0]
    await _walk_at(monkeypatch, store, [request], far)
    async with store.engine.connect() as conn:
        held = (await conn.execute(text("SELECT count(*) FROM sessions_default"))).scalar_one()
        held_steps = (await conn.execute(text("SELECT count(*) FROM steps_default"))).scalar_one()
    assert (held, held_steps) == (1, 2)
    created = await ensure_ahead(store.engine, "day", 7)
    assert far.strftime("sessions_p%Y%m%d") in created
    async with store.engine.connect() as conn:
        for table in ("sessions_default", "steps_default"):
            assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one() == 0
        moved = (
            await conn.execute(text(f"SELECT count(*) FROM {far.strftime('steps_p%Y%m%d')}"))
        ).scalar_one()
    assert moved == 2
    stored = await TraceQueries(store.engine).session(request.request_id)
    assert stored is not None and [s["step"] for s in stored["steps"]] == [1, 2]


async def test_retention_exports_old_partitions_and_drops_only_them(
    store: Store, db: str, tmp_path: Path, monkeypatch
) -> None:
    old, new = _requests(3, "old", seed=1), _requests(2, "new", seed=2)
    old_time = datetime.now(UTC) - timedelta(days=OLD_DAYS)
    await _walk_at(monkeypatch, store, old, old_time)
    for request in new:
        await _walk(store, request)
    await ensure_ahead(store.engine, "day", 7)  # the old rows leave the default partition
    old_sessions, old_steps = await _rows(store, [r.request_id for r in old])
    assert len(old_sessions) == 3 and len(old_steps) == 6
    before = await _partition_names(store)

    report = await retain(db, timedelta(days=30), tmp_path / "export")

    name = old_time.strftime("sessions_p%Y%m%d")
    assert report.dropped == [name]
    parts_file = name.replace("sessions", "prompt_parts") + ".parquet"
    assert sorted(p.name for p in report.files) == [
        parts_file,
        f"{name}.parquet",
        f"{name.replace('sessions', 'steps')}.parquet",
    ]
    _same(old_sessions, pq.read_table(tmp_path / "export" / f"{name}.parquet").to_pylist())
    _same(
        old_steps,
        pq.read_table(tmp_path / "export" / f"{name.replace('sessions', 'steps')}.parquet").to_pylist(),
    )
    assert not list((tmp_path / "export").glob(".*")), "no temporary file left"
    # the export reads back in full without the store: steps' calls joined with the parts file
    exported_parts = {
        r["hash"]: orjson.loads(r["body"])
        for r in pq.read_table(tmp_path / "export" / parts_file).to_pylist()
    }
    assert set(exported_parts) == {part_hash(_system(r)) for r in old} | {part_hash(FORMAT)}
    by_id = {s["id"]: r for s, r in zip(old_sessions, old, strict=True)}
    for row in pq.read_table(
        tmp_path / "export" / f"{name.replace('sessions', 'steps')}.parquet"
    ).to_pylist():
        recorded = [c.model_dump(mode="json") for c in _calls(by_id[row["session_id"]], row["step"])]
        assert join_calls(orjson.loads(row["calls"]), exported_parts) == recorded
    # the old sessions' own system messages are gone from the store; the shared format and the
    # new sessions' parts stay (the new steps below read back joined)
    assert report.parts_deleted == len(old)
    async with store.engine.connect() as conn:
        left = set((await conn.execute(select(prompt_parts.c.hash))).scalars())
    assert left == {part_hash(_system(r)) for r in new} | {part_hash(FORMAT)}

    after = await _partition_names(store)
    assert set(before) - set(after) == {name}
    async with store.engine.connect() as conn:
        assert (
            await conn.execute(text("SELECT to_regclass(:n)"), {"n": name.replace("sessions", "steps")})
        ).scalar() is None
    queries = TraceQueries(store.engine)
    for request in old:
        assert await queries.session(request.request_id) is None
    for request in new:
        stored = await queries.session(request.request_id, with_calls=True)
        assert stored is not None and stored["status"] == "ok"
        assert [s["step"] for s in stored["steps"]] == [1, 2]
        assert [s["calls"] for s in stored["steps"]] == [
            [c.model_dump(mode="json") for c in _calls(request, n)] for n in (1, 2)
        ]
    assert len(await queries.load([r.request_id for r in new])) == 2

    again = await retain(db, timedelta(days=30), tmp_path / "export")
    assert again.dropped == [] and again.files == []


async def test_a_crash_between_export_and_drop_is_repaired_by_running_again(
    store: Store, db: str, tmp_path: Path, monkeypatch
) -> None:
    old = _requests(2, "crash", seed=3)
    old_time = datetime.now(UTC) - timedelta(days=OLD_DAYS)
    await _walk_at(monkeypatch, store, old, old_time)
    old_sessions, old_steps = await _rows(store, [r.request_id for r in old])
    name = old_time.strftime("sessions_p%Y%m%d")

    class Crash(Exception):
        pass

    def crash(_part: object) -> None:
        raise Crash

    with pytest.raises(Crash):
        await retain(db, timedelta(days=30), tmp_path, after_export=crash)
    assert name in await _partition_names(store), "nothing dropped before the crash"
    assert (tmp_path / f"{name}.parquet").exists()
    (tmp_path / f".{name}.parquet.tmp999").write_bytes(b"half a file")  # a crash mid-write too
    assert await TraceQueries(store.engine).session(old[0].request_id) is not None

    report = await retain(db, timedelta(days=30), tmp_path)
    assert report.dropped == [name]
    assert report.rows == {name: 2, name.replace("sessions", "steps"): 4}
    assert (tmp_path / f"{name.replace('sessions', 'prompt_parts')}.parquet").exists()
    _same(old_sessions, pq.read_table(tmp_path / f"{name}.parquet").to_pylist())
    _same(old_steps, pq.read_table(tmp_path / f"{name.replace('sessions', 'steps')}.parquet").to_pylist())
    assert not list(tmp_path.glob(".*"))
    assert name not in await _partition_names(store)
    assert (await retain(db, timedelta(days=30), tmp_path)).dropped == []


async def test_two_workers_receiving_one_request_id_store_one_session(store: Store, db: str) -> None:
    other = Store(db)
    try:
        requests = _requests(30, "twice", seed=4)
        batches = [requests[i : i + 5] for i in range(0, 30, 5)]
        for _ in range(3):  # the same batches from both, in opposite orders (no deadlock)
            await asyncio.gather(
                *(store.receive([(r, None) for r in b]) for b in batches),
                *(other.receive([(r, None) for r in reversed(b)]) for b in reversed(batches)),
            )
        async with store.engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        select(sessions.c.request_id, func.count())
                        .where(sessions.c.request_id.in_([r.request_id for r in requests]))
                        .group_by(sessions.c.request_id)
                    )
                ).all()
            )
        assert counts == {r.request_id: 1 for r in requests}
        # a batch holding one request_id twice stores it once
        dup = _requests(1, "inbatch", seed=5)[0]
        await store.receive([(dup, None), (dup, None)])
        async with store.engine.connect() as conn:
            assert (
                await conn.execute(select(func.count()).where(sessions.c.request_id == dup.request_id))
            ).scalar_one() == 1
    finally:
        await other.close()


async def test_a_duplicate_after_its_partition_was_dropped_is_a_new_session(
    store: Store, db: str, monkeypatch
) -> None:
    request = _requests(1, "late", seed=6)[0]
    await _walk_at(monkeypatch, store, [request], datetime.now(UTC) - timedelta(days=OLD_DAYS))
    assert await store.receive([(request, None)]) == []  # finished, stored without a source
    assert await store.claim(request.request_id, "w2", 30) is None, "deduplicated while stored"
    assert (await retain(db, timedelta(days=30))).dropped

    receipt = await store.receive_checked([(request, None)])
    assert receipt.seen == [] and receipt.conflicts == {}
    claim = await store.claim(request.request_id, "w2", 30)
    assert claim is not None and claim.attempts == 1 and claim.steps == [], (
        "after retention the request_id is new again: walked once more"
    )


async def test_the_commands_list_create_and_drop(store: Store, db: str, tmp_path: Path, monkeypatch) -> None:
    import subprocess

    from service_kit import CLI

    old_time = datetime.now(UTC) - timedelta(days=OLD_DAYS)
    await _walk_at(monkeypatch, store, _requests(1, "cli", seed=8), old_time)
    name = old_time.strftime("sessions_p%Y%m%d")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args, "--db", db], capture_output=True, text=True, timeout=120)

    made = await asyncio.to_thread(run, "db", "partitions")
    assert made.returncode == 0 and name in made.stdout, made.stderr  # out of the default partition
    listed = await asyncio.to_thread(run, "retention", "--older-than", "30d", "--dry-run")
    assert listed.returncode == 0 and f"would drop {name}" in listed.stdout
    assert name in await _partition_names(store)
    bad = await asyncio.to_thread(run, "retention", "--older-than", "30 days")
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    done = await asyncio.to_thread(run, "retention", "--older-than", "30d", "--export", str(tmp_path))
    assert done.returncode == 0 and f"dropped {name}" in done.stdout, done.stderr
    assert "2 prompt part(s) no kept step refers to deleted" in done.stderr  # its system message, the format
    assert name not in await _partition_names(store)
    assert pq.read_table(tmp_path / f"{name}.parquet").num_rows == 1


def test_export_without_pyarrow_names_the_extra(monkeypatch) -> None:
    import worker.extras as extras
    from worker.store.retention import _pyarrow

    monkeypatch.setattr(extras, "_importable", lambda module: module != "pyarrow")
    with pytest.raises(extras.MissingExtra, match=r"llm4rerank\[eval\]"):
        _pyarrow()


async def test_parts_of_kept_sessions_older_than_the_cutoff_stay(store: Store, db: str, monkeypatch) -> None:
    """Monthly partitions: a partition straddling the cutoff is kept with sessions older than the
    cutoff; their parts stay although last used before it, while the parts only a dropped
    partition's steps used are deleted, and a part both used is kept."""
    month = floor(datetime.now(UTC) - timedelta(days=120), "month")
    kept_time = month + timedelta(days=2, hours=1)  # day 3 of that month
    dropped_time = kept_time - timedelta(days=35)  # the month before
    now = kept_time + timedelta(days=47)  # the cutoff (30 days) falls on day 20 of the same month
    dropped, kept = _requests(2, "gone", seed=11), _requests(2, "kept", seed=12)
    await _walk_at(monkeypatch, store, dropped, dropped_time)
    await _walk_at(monkeypatch, store, kept, kept_time)

    report = await retain(db, timedelta(days=30), interval="month", now=now)

    assert report.dropped == [floor(dropped_time, "month").strftime("sessions_p%Y%m")]
    assert report.parts_deleted == len(dropped)
    async with store.engine.connect() as conn:
        left = dict((await conn.execute(select(prompt_parts.c.hash, prompt_parts.c.last_used))).all())
    assert set(left) == {part_hash(_system(r)) for r in kept} | {part_hash(FORMAT)}
    assert all(day == kept_time.date() for day in left.values()), "the shared part moved forward"
    assert all(day < (now - timedelta(days=30)).date() for day in left.values())
    queries = TraceQueries(store.engine)
    for request in kept:
        stored = await queries.session(request.request_id, with_calls=True)
        assert stored is not None
        assert [s["calls"] for s in stored["steps"]] == [
            [c.model_dump(mode="json") for c in _calls(request, n)] for n in (1, 2)
        ]
    for request in dropped:
        assert await queries.session(request.request_id) is None


async def test_a_part_is_written_at_most_once_a_day_and_last_used_never_moves_back(store: Store) -> None:
    body = {"role": "system", "content": "once a day"}
    key = part_hash(body)
    day = datetime.now(UTC).date()

    async def state() -> tuple[int, object]:
        async with store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(text("xmin::text::bigint"), prompt_parts.c.last_used).where(
                        prompt_parts.c.hash == key
                    )
                )
            ).one()
        return int(row[0]), row[1]

    async def mark(used: object) -> None:
        async with store.engine.begin() as conn:
            await store_parts(conn, {key: body}, used)  # type: ignore[arg-type]

    await mark(day - timedelta(days=2))
    first = await state()
    assert first[1] == day - timedelta(days=2)
    await mark(day - timedelta(days=2))
    assert await state() == first, "same day: the row is not written again"
    await mark(day - timedelta(days=5))
    assert await state() == first, "an earlier day does not move last_used back"
    await mark(day)
    later = await state()
    assert later[1] == day and later[0] != first[0]
    async with store.engine.connect() as conn:
        assert (
            await conn.execute(select(prompt_parts.c.body).where(prompt_parts.c.hash == key))
        ).scalar() == body


async def test_per_partition_setup_runs_on_every_new_partition_and_on_demand(
    store: Store, monkeypatch
) -> None:
    """PARTITION_SETUP (e.g. storage parameters a partitioned parent cannot hold) runs on each
    partition created, also one filled from the default partition, and setup_existing() runs it
    on all partitions already there."""
    import worker.store.partitions as partitions_module

    async def options() -> dict[str, list[str] | None]:
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'steps'::regclass"
                )
            )
            return {name: opts for name, opts in rows.all()}

    far = floor(datetime.now(UTC), "day") + timedelta(days=60)
    stray = floor(datetime.now(UTC), "day") - timedelta(days=300)
    await _walk_at(monkeypatch, store, _requests(1, "setup", seed=14), stray)  # undoes monkeypatch
    monkeypatch.setattr(
        partitions_module,
        "PARTITION_SETUP",
        {"sessions": (), "steps": ("ALTER TABLE {partition} SET (toast_tuple_target = 256)",)},
    )
    async with store.engine.begin() as conn:
        created = await conn.run_sync(ensure_partitions, "day", 1, None, [far])
    assert far.strftime("sessions_p%Y%m%d") in created and stray.strftime("sessions_p%Y%m%d") in created
    found = await options()
    for day in (far, stray):  # a new empty one, and one filled from the default partition
        assert found[day.strftime("steps_p%Y%m%d")] == ["toast_tuple_target=256"]
    assert found["steps_default"] is None, "created before the setup was set"

    async with store.engine.begin() as conn:
        done = await conn.run_sync(partitions_module.setup_existing)
    assert "steps_default" in done and "sessions_default" in done
    assert all(opts == ["toast_tuple_target=256"] for opts in (await options()).values())


async def test_pruning_beside_a_writer_never_loses_a_part_the_writer_refers_to(store: Store) -> None:
    """A writer marking an old part used (its transaction still open) holds the row: pruning skips
    it, and after the commit the part is there, marked today. A part pruned before a writer comes
    is inserted again by the writer's upsert."""
    from worker.store.parts import prune_parts

    body = {"role": "system", "content": "shared by a late step"}
    key = part_hash(body)
    today = datetime.now(UTC).date()
    async with store.engine.begin() as conn:
        await store_parts(conn, {key: body}, today - timedelta(days=10))

    async with store.engine.connect() as writer:
        await writer.begin()
        await store_parts(writer, {key: body}, today)  # not committed yet
        assert await prune_parts(store.engine, today - timedelta(days=5)) == 0
        await writer.commit()
    async with store.engine.connect() as conn:
        assert (
            await conn.execute(select(prompt_parts.c.last_used).where(prompt_parts.c.hash == key))
        ).scalar() == today

    assert await prune_parts(store.engine, today + timedelta(days=1)) == 1
    async with store.engine.begin() as conn:
        await store_parts(conn, {key: body}, today)
    async with store.engine.connect() as conn:
        assert (
            await conn.execute(select(prompt_parts.c.body).where(prompt_parts.c.hash == key))
        ).scalar() == body


async def test_every_partition_compresses_the_columns_its_parent_does(store: Store, monkeypatch) -> None:
    """Migration 0009 sets lz4 on the parents and the partitions already there; a partition made
    later (empty, or filled from the default partition) gets the same columns compressed."""
    from worker.store.storage import COMPRESSED_COLUMNS

    stray = floor(datetime.now(UTC), "day") - timedelta(days=200)
    await _walk_at(monkeypatch, store, _requests(1, "lz4", seed=15), stray)
    far = floor(datetime.now(UTC), "day") + timedelta(days=90)
    async with store.engine.begin() as conn:
        await conn.run_sync(ensure_partitions, "day", 1, None, [far])
        rows = (
            await conn.execute(
                text(
                    "SELECT p.relname, c.relname, a.attname, a.attcompression::text FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                    "JOIN pg_attribute a ON a.attrelid = c.oid "
                    "WHERE p.relname IN ('sessions', 'steps') AND a.attnum > 0 AND NOT a.attisdropped"
                )
            )
        ).all()
    names = {partition for _, partition, _, _ in rows}
    assert {stray.strftime("steps_p%Y%m%d"), far.strftime("steps_p%Y%m%d"), "steps_default"} <= names
    for parent, partition, column, method in rows:
        wanted = "l" if column in COMPRESSED_COLUMNS[parent] else ""
        assert method == wanted, (partition, column, method)
