#!/usr/bin/env bash
# Stop what infra/up.sh started: only the broker in .local/kafka/kafka.pid and the project's
# own PostgreSQL cluster; servers that were found already running are left alone. Data is kept.
set -euo pipefail
INFRA="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bash "$INFRA/kafka/kafka.sh" stop
bash "$INFRA/postgres/pg.sh" stop
