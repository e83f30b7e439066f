#!/usr/bin/env bash
# The evaluation demo: generated data, the llm policy through sim-llm (a SIMULATED LLM that answers
# with the heuristic policy, not a model), the heuristic policy and the baselines, written to
# artifacts/eval-demo/. Rerunning reuses the cached results; extra arguments go to `llm4rerank eval`
# (e.g. --fresh to start over). Assumes .venv exists (make install).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT=${OUT:-artifacts/eval-demo}
USERS=${USERS:-300}
PY="$VENV/bin/python"
CLI="$VENV/bin/llm4rerank"
[ -x "$CLI" ] || { echo "error: $CLI not found; create the virtualenv first (make install)" >&2; exit 2; }

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$OUT"
"$CLI" sim-llm --port "$PORT" --seed 0 >"$OUT/sim-llm.log" 2>&1 &
SIM_PID=$!
trap 'kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true' EXIT

"$PY" - "$PORT" <<'PYEOF'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}/v1/models"
for _ in range(300):
    try:
        if httpx.get(url, timeout=1).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        time.sleep(0.1)
sys.exit("error: sim-llm did not start; see the log in the output folder")
PYEOF

echo "eval-demo: sim-llm (SIMULATED LLM) on port $PORT; $USERS generated users; report in $OUT/" >&2
START=$(date +%s)
LLM4RERANK_LLM_BASE_URL="http://127.0.0.1:$PORT/v1" LLM4RERANK_LLM_MODEL=sim-llm-simulated \
  "$CLI" eval --dataset synthetic --users "$USERS" --items 500 --goals A,D,F,ADF,D-F,F-D \
  --policy llm,heuristic,upstream,random,popularity,mmr,dpp,fair --concurrency 8 --seed 0 --out "$OUT" "$@"
echo "eval-demo: done in $(( $(date +%s) - START )) s; open $OUT/report.md" >&2
