#!/usr/bin/env bash
# Bring up local Kafka (127.0.0.1:9092) and PostgreSQL (127.0.0.1:5432) for dev and tests.
# Idempotent: whatever is already installed or running is left as is. Undo with infra/down.sh.
set -euo pipefail
INFRA="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bash "$INFRA/kafka/kafka.sh" install
bash "$INFRA/kafka/kafka.sh" start
# PostgreSQL comes up while the broker boots.
bash "$INFRA/postgres/pg.sh" install
bash "$INFRA/postgres/pg.sh" start
bash "$INFRA/kafka/kafka.sh" wait "${KAFKA_WAIT_TIMEOUT:-90}"
