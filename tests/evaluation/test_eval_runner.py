"""The runner's bounded concurrency and its per-request cache: an interrupted run continues where it
stopped and reruns nothing it finished."""

import asyncio

import pytest

from worker.evaluation.candidates import Case
from worker.evaluation.runner import Record, ResultCache, run_all
from worker.schemas import RerankRequest


def _cases(n):
    return [
        Case(
            RerankRequest(
                request_id=f"r{i}",
                goal="g",
                user={"user_id": "u"},
                candidates=[{"item_id": "a"}, {"item_id": "b"}],
            ),
            "a",
        )
        for i in range(n)
    ]


class Counting:
    """A fake walk method: counts calls and concurrency, optionally fails after `fail_after` calls."""

    uses_goal = True

    def __init__(self, name="fake", model="m1", fail_after=None, policy="fake"):
        self.name, self.model, self.version = name, model, "v1"
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self.fail_after = fail_after
        self.policy = policy

    async def run(self, case, goal):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("endpoint went away")
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        return Record(
            self.name,
            goal,
            case.request.request_id,
            ["b", "a"],
            path=["accuracy", "stop"],
            policy=self.policy,
            model=self.model,
            prompt_version=self.version,
        )


async def test_concurrency_is_bounded_and_every_job_runs_once(tmp_path):
    method = Counting()
    records, ran = await run_all(
        [method], _cases(30), ["A", "D"], ResultCache(tmp_path / "c.jsonl"), concurrency=4, progress=False
    )
    assert ran == 60 == method.calls == len(records)
    assert method.peak == 4
    assert [(r.goal, r.request_id) for r in records[:2]] == [("A", "r0"), ("A", "r1")]  # plan order


async def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    cache = ResultCache(tmp_path / "c.jsonl")
    broken = Counting(fail_after=25)
    with pytest.raises(RuntimeError, match="endpoint went away"):
        await run_all([broken], _cases(20), ["A", "D"], cache, concurrency=3, progress=False)
    done = len(cache.load())
    assert 20 <= done <= 25
    with cache.path.open("ab") as handle:
        handle.write(b'{"method": "fake", "goal"')  # a line cut short by the interruption
    fixed = Counting()
    records, ran = await run_all([fixed], _cases(20), ["A", "D"], cache, concurrency=3, progress=False)
    assert ran == fixed.calls == 40 - done
    assert len(records) == 40 and len({r.key for r in records}) == 40
    again = Counting()
    _, ran = await run_all([again], _cases(20), ["A", "D"], cache, progress=False)
    assert ran == again.calls == 0


async def test_cached_results_from_another_model_or_a_fallback_are_redone(tmp_path):
    cache = ResultCache(tmp_path / "c.jsonl")
    await run_all([Counting(policy="llm+heuristic")], _cases(5), ["A"], cache, progress=False)
    retry = Counting()
    _, ran = await run_all([retry], _cases(5), ["A"], cache, progress=False)
    assert ran == 5  # fallbacks are retried
    other = Counting(model="m2")
    _, ran = await run_all([other], _cases(5), ["A"], cache, progress=False)
    assert ran == 5  # another model's answers do not count
    _, ran = await run_all([Counting(model="m2")], _cases(5), ["A"], cache, progress=False)
    assert ran == 0
