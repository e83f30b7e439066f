#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the trace viewer's browser test.
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (or sudo) and apt; no stdin.
# Playwright's own browser download is not used: the test drives this system binary.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "chromium: present at $CHROMIUM"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "chromium: missing and not root; run as root: apt-get install -y chromium" >&2
    exit 2
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: missing and apt-get is not available; install Chromium at $CHROMIUM" >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q </dev/null
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core </dev/null
"$CHROMIUM" --version
