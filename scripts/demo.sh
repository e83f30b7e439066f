#!/usr/bin/env bash
# `make demo`: the simulated LLM and the worker in the background (reused when running), the
# sample requests through Kafka, the reranked results and one navigation trace.
# Usage: scripts/demo.sh run|stop
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=.local/demo
SIM_PORT="${SIM_PORT:-8000}"
mkdir -p "$RUN"
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
answers() { "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
  "http://127.0.0.1:$SIM_PORT/v1/models" >/dev/null 2>&1; }

start_sim() {
  if answers; then
    echo "demo: an LLM endpoint already answers on :$SIM_PORT, reusing it"
    return
  fi
  nohup "$BIN/llm4rerank" sim-llm --port "$SIM_PORT" --latency-ms 40 --latency-jitter-ms 20 \
    --malformed-rate 0.1 --seed 7 >"$RUN/sim-llm.log" 2>&1 &
  echo $! >"$RUN/sim-llm.pid"
  for _ in $(seq 100); do
    answers && break
    sleep 0.1
  done
  echo "demo: $(head -n 1 "$RUN/sim-llm.log")"
}

start_worker() {
  if alive "$RUN/worker.pid"; then
    echo "demo: worker already running (pid $(cat "$RUN/worker.pid"))"
    return
  fi
  LLM4RERANK_STATE_DIR="$RUN/state" nohup "$BIN/llm4rerank" worker >"$RUN/worker.log" 2>&1 &
  echo $! >"$RUN/worker.pid"
  echo "demo: worker started (pid $!, log $RUN/worker.log, metrics :${LLM4RERANK_METRICS_PORT:-9464})"
}

stop_pid() {
  if alive "$1"; then
    kill -TERM "$(cat "$1")"
    for _ in $(seq 300); do alive "$1" || break; sleep 0.1; done
    alive "$1" && kill -KILL "$(cat "$1")"
    echo "demo: stopped $(basename "$1" .pid)"
  fi
  rm -f "$1"
}

case "${1:-run}" in
  run)
    start_sim
    start_worker
    echo "demo: submitting examples/requests.jsonl (12 requests) and examples/invalid.jsonl (3 bad ones)"
    cat examples/requests.jsonl examples/invalid.jsonl >"$RUN/submit.jsonl"
    "$BIN/llm4rerank" submit "$RUN/submit.jsonl" --wait --timeout 120 >"$RUN/results.jsonl" || true
    "$BIN/python" scripts/show_results.py "$RUN/results.jsonl"
    echo
    echo "demo: the navigation trace of demo-004 (llm4rerank trace show demo-004):"
    "$BIN/llm4rerank" trace show demo-004
    echo
    echo "demo: the LLM here is SIMULATED (sim-llm answers with the heuristic policy); point"
    echo "      LLM4RERANK_LLM_BASE_URL at a vLLM or TGI server for real reranking."
    ;;
  stop)
    stop_pid "$RUN/worker.pid"
    stop_pid "$RUN/sim-llm.pid"
    ;;
  *) echo "usage: $0 run|stop" >&2; exit 2 ;;
esac
