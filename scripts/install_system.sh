#!/usr/bin/env bash
# Debian packages the project needs, installed in one apt run and only when missing:
# PostgreSQL (always) and Chromium (with --browser, for the trace viewer's browser test).
set -euo pipefail
missing=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if [[ "${1:-}" == "--browser" ]]; then
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
fi
if ((${#missing[@]} == 0)); then
  echo "system: packages present"
  exit 0
fi
echo "system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
  # the package starts Debian's own cluster on 5432; the project runs its own (infra/postgres)
  pg_lsclusters -h | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" stop || true
  done
fi
