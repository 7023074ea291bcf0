#!/usr/bin/env bash
# The browser tests' own set-up, called by scripts/setup_env.sh: Debian's chromium (apt-get,
# skipped when /usr/bin/chromium exists) and Playwright's Python package (from
# requirements-dev.txt; Playwright's own browser download is never used: the tests launch
# /usr/bin/chromium through executable_path). Idempotent; a no-op once done.
# Set STORY_SKIP_BROWSER=1 to skip (the browser tests then skip themselves).
set -euo pipefail
[ "${STORY_SKIP_BROWSER:-0}" = "1" ] && { echo "[setup] STORY_SKIP_BROWSER=1: no chromium"; exit 0; }
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] no /usr/bin/chromium and no apt-get: the browser tests will be skipped (install Debian/Ubuntu chromium to run them)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "[setup] chromium is missing and apt-get needs root: run 'sudo apt-get install chromium' for the browser tests" >&2
    exit 0
  fi
fi
echo "[setup] installing Debian chromium for the browser tests (apt-get)"
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=300)  # wait for another apt/dpkg run instead of failing
$SUDO apt-get "${APT_OPTS[@]}" update -qq
$SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x /usr/bin/chromium ] || { echo "[setup] apt-get finished but /usr/bin/chromium is missing" >&2; exit 1; }
