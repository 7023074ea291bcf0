# The README's commands. Each one does its own set-up (scripts/setup_env.sh, a no-op when done).
# COMFYUI_PATH=/path/to/ComfyUI: your own ComfyUI instead of the embedded 0.3.75, in its own .venv-comfyui.
VENV ?= $(if $(COMFYUI_PATH),.venv-comfyui,.venv)
PY := $(VENV)/bin/python
export STORY_VENV := $(VENV)
CKPT ?=
ARGS ?=

.PHONY: setup demo test test-fast serve bench clean

setup:
	@bash scripts/setup_env.sh

## The main job: the example story through a real headless ComfyUI and its API queue -> output/
demo: setup
	@exec $(PY) scripts/run_story.py $(if $(CKPT),--ckpt "$(CKPT)") $(ARGS)

## Every test: the linter and format check (ruff, once), the type check of the pure packages (mypy,
## scripts/typecheck.py), then on every host (scripts/test_matrix.py:
## the embedded 0.3.75, and 0.33.0 when ../shared/hosts has it; HOSTS=0.3.75 for one) pure math,
## in-process nodes on tiny models, live-server and browser tests.
HOSTS ?=
test: setup
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .
	@$(PY) scripts/typecheck.py
	@STORY_HOSTS="$(HOSTS)" $(PY) scripts/test_matrix.py $(ARGS)

## ComfyUI with the pack, for the browser canvas (http://127.0.0.1:$(PORT)); ARGS=--tiny-models adds the
## test-only tiny model nodes. exec: a SIGTERM from make (docker stop) reaches the launcher, which stops ComfyUI.
PORT ?= 8188
serve: setup
	@exec $(PY) scripts/serve.py --port $(PORT) $(if $(CKPT),--ckpt "$(CKPT)") $(ARGS)

bench: setup
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf output .pytest_cache
