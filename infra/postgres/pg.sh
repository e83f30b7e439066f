#!/usr/bin/env bash
# Local PostgreSQL for development and tests: a project-owned cluster on 127.0.0.1:5432.
# Usage: infra/postgres/pg.sh install|start|stop|kill|restart|status
# <repo>/.local/pg/datadir records where the project's cluster lives; `stop` only ever stops a
# server running from that data dir. A server found already listening on 5432 (e.g. Debian's
# own cluster) is reused for the database/role setup but never stopped.
# Outage tests: `pg.sh stop` then `pg.sh start` (data is kept; start re-runs the idempotent setup).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
REC="$REPO/.local/pg"
HOST=127.0.0.1 PORT=5432 DB=llm4rerank READER=llm4rerank_reader
export PGCONNECT_TIMEOUT=5

say() { echo "pg: $*"; }
pgbin() { printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }
as_pg() { (cd / && runuser -u postgres -- "$@"); }

install() {
  if compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    say "postgres present ($(pgbin)), skipping install"
    return
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  # The Debian package may start its own "main" cluster on 5432; we just caused that, so stop
  # it and let this script's cluster own the port.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v c; do
      pg_ctlcluster "$v" "$c" stop || true
    done
  fi
  say "installed postgresql ($(pgbin))"
}

# Cluster root (postgres-owned; holds data/ and server.log). Inside the repo when the postgres
# user can reach it, else under /var/tmp keyed by a hash of the repo path.
cluster_root() {
  if [[ -f "$REC/datadir" ]]; then dirname "$(cat "$REC/datadir")"; return; fi
  mkdir -p "$REC/cluster"
  chown postgres:postgres "$REC/cluster"
  if as_pg test -w "$REC/cluster"; then
    echo "$REC/cluster"
  else
    rmdir "$REC/cluster"
    echo "/var/tmp/llm4rerank-pg-$(printf %s "$REPO" | sha1sum | cut -c1-12)"
  fi
}

ours_running() {
  [[ -f "$REC/datadir" ]] && as_pg "$(pgbin)/pg_ctl" -D "$(cat "$REC/datadir")" status >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# psql as superuser: over TCP (trust on our cluster), else via the local socket as the postgres
# OS user (peer auth on a reused Debian cluster).
psql_super() {
  local db="$1"; shift
  if psql -w -h "$HOST" -p "$PORT" -U postgres -d postgres -Atqc 'select 1' </dev/null >/dev/null 2>&1; then
    psql -h "$HOST" -p "$PORT" -U postgres -d "$db" -v ON_ERROR_STOP=1 -Atq "$@"
  else
    as_pg psql -p "$PORT" -d "$db" -v ON_ERROR_STOP=1 -Atq "$@"
  fi
}

init_cluster() {
  local root="$1" data="$1/data"
  mkdir -p "$root"
  chown postgres:postgres "$root"
  chmod 700 "$root"
  as_pg "$(pgbin)/initdb" -D "$data" -U postgres -E UTF8 --locale=C -A trust >/dev/null
  cat >>"$data/postgresql.conf" <<EOF

# llm4rerank local dev cluster (infra/postgres/pg.sh): TCP on loopback only, no unix socket.
listen_addresses = '$HOST'
port = $PORT
unix_socket_directories = ''
EOF
  # LOCAL DEVELOPMENT ONLY: passwordless (trust) auth, reachable from the loopback interface only.
  cat >"$data/pg_hba.conf" <<EOF
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
EOF
  chown postgres:postgres "$data/pg_hba.conf"
  say "initialized cluster in $data"
}

provision() {
  psql_super postgres >/dev/null <<SQL
SELECT 'CREATE DATABASE $DB OWNER postgres' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\gexec
SQL
  psql_super "$DB" <"$HERE/reader.sql" >/dev/null
  say "database $DB and read-only role $READER in place"
}

start() {
  if ours_running; then
    say "already running (ours, $(cat "$REC/datadir"))"
  elif port_open; then
    say "something already listens on $HOST:$PORT, reusing it (not ours, will not stop it)"
  else
    local root
    root="$(cluster_root)"
    [[ -f "$root/data/PG_VERSION" ]] || init_cluster "$root"
    mkdir -p "$REC"
    echo "$root/data" >"$REC/datadir"
    as_pg "$(pgbin)/pg_ctl" -D "$root/data" -l "$root/server.log" -w -t 60 start >/dev/null \
      || { tail -n 20 "$root/server.log" >&2; exit 1; }
    say "started cluster $root/data on $HOST:$PORT (log $root/server.log)"
  fi
  provision
}

stop() {
  if ours_running; then
    as_pg "$(pgbin)/pg_ctl" -D "$(cat "$REC/datadir")" -m fast -w stop >/dev/null
    say "stopped cluster $(cat "$REC/datadir")"
  else
    say "no cluster of ours running, nothing to stop"
  fi
}

# Fault tests: SIGKILL the postmaster (no shutdown at all); `start` recovers the cluster.
crash() {
  if ours_running; then
    local pid children
    pid="$(head -n 1 "$(cat "$REC/datadir")/postmaster.pid")"
    children="$(pgrep -P "$pid" || true)"
    kill -KILL "$pid"
    # its children notice and exit; stragglers would keep the port and shared memory
    for _ in $(seq 1 50); do
      [[ -z "$children" ]] || ! kill -0 $children 2>/dev/null && break; sleep 0.1
    done
    [[ -z "$children" ]] || kill -KILL $children 2>/dev/null || true
    say "postmaster killed (SIGKILL)"
  else
    say "no cluster of ours running, nothing to kill"
  fi
}

status() {
  if ours_running; then say "running (ours, $(cat "$REC/datadir"))"
  elif port_open; then say "something listens on $HOST:$PORT (not started by us)"
  else say "not running"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  kill) crash ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
esac
