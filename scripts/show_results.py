"""Print `submit --wait` output as a short table: one line per result or dead letter."""

import sys

import orjson

for line in open(sys.argv[1], "rb"):
    record = orjson.loads(line)
    if record.get("dead_letter"):
        error = record["error"]
        print(f"  DLQ  {record.get('request_id') or '(no id)':<10} {error['code']}: {error['message'][:70]}")
        continue
    top = ", ".join(record["ranking"][:5])
    print(
        f"  {record['status']:<8} {record['request_id']:<10} {' > '.join(record['path']):<42} "
        f"top5 [{top}] calls={record['llm_calls']} {record['latency_ms']}ms"
    )
