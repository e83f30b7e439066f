"""The worker refuses to start, with one line naming the setting, when the LLM server refuses
the configured answer format (sim-llm, SIMULATED, speaking TGI's dialect)."""

from __future__ import annotations

import time


def test_worker_exits_naming_the_setting_when_the_format_is_refused(
    sim_llm, stream_env, start_worker
) -> None:
    sim = sim_llm("--dialect", "tgi")
    env = {**stream_env, "LLM4RERANK_LLM_BASE_URL": sim.base_url, "LLM4RERANK_LLM_STRUCTURED": "json_schema"}
    worker = start_worker(env)
    deadline = time.monotonic() + 90
    while worker.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker.alive(), "the worker kept running with a refused answer format"
    assert worker.proc is not None and worker.proc.returncode != 0
    log = worker.log.read_text()
    assert "LLM4RERANK_LLM_STRUCTURED" in log and "422" in log, log[-2000:]
