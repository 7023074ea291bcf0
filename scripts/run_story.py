"""The README's main job: run the example story through a real headless ComfyUI.

Starts ComfyUI (the host from scripts/comfy_host.py) on a free loopback port with this pack
installed, queues example_workflows/api/one_character_story.json through POST /prompt, follows
progress over the websocket and writes the panels and the comic page to output/ (the same
queue/progress/download code as the `scripts/story_client.py` command line).

    make demo                                   # the story world toy model (scripts/world_demo.py)
    make demo CKPT=/path/to/model.safetensors   # your SD1.5 / SDXL checkpoint
    make demo ARGS=--smoke                      # tiny random-weight SDXL-shaped model: noise, a check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host import ROOT, ComfyServer  # noqa: E402
from story_client import (  # noqa: E402 - the CLI's own code: queue, progress, download
    PromptFailed,
    PromptRejected,
    apply_parameters,
    download_outputs,
    run_prompt,
    text_progress,
)
from world_demo import to_world  # noqa: E402

DEFAULT_WORKFLOW = ROOT / "example_workflows" / "api" / "one_character_story.json"


def build_prompt(workflow: dict, args) -> dict:
    """The workflow with the command's story, seed, steps, size and checkpoint (the CLI's code);
    without a checkpoint (and without --smoke) the story world toy model draws."""
    prompt = apply_parameters(workflow, args.story, args.seed, args.ckpt, args.steps, args.width, args.height)
    if args.ckpt or args.smoke:
        return prompt
    story = prompt_story(workflow, prompt) if args.story else ""
    return to_world(prompt, story, args.steps, args.width, args.height)


def prompt_story(workflow: dict, prompt: dict) -> str:
    """The story text --story put into the prompt."""
    return next(n["inputs"]["story"] for n in prompt.values() if n["class_type"] == "StoryDiffPrompt")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", default="", help="an SD1.5/SDXL .safetensors checkpoint; empty = the story world toy model"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="without --ckpt: the tiny random-weight SDXL-shaped model (noise)",
    )
    p.add_argument(
        "--story", default="", help="story text, or a file holding it (default: the workflow's story)"
    )
    p.add_argument("--workflow", default=str(DEFAULT_WORKFLOW), help="API-format workflow JSON")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument(
        "--width", type=int, default=0, help="default 1024 with a checkpoint (use 512 or 768 for SD1.5)"
    )
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--output", default=str(ROOT / "output"))
    args = p.parse_args(argv)

    checkpoints = []
    if args.ckpt:
        ckpt = Path(args.ckpt).expanduser()
        if not ckpt.is_file():
            print(
                f"error: CKPT={args.ckpt} does not exist; give the path of an SD1.5/SDXL .safetensors "
                f"checkpoint.",
                file=sys.stderr,
            )
            return 2
        checkpoints.append(ckpt)
        print(f"[demo] checkpoint: {ckpt}")
    elif args.smoke:
        print(
            "[demo] --smoke: using the tiny random-weight SDXL-shaped model; the images are noise, not art."
        )
    else:
        print("[demo] no CKPT given: the story world toy model draws (64x64 pictures of a procedural world;")
        print(
            "[demo] a toy trained by the pack, not art). For your own model: make demo "
            "CKPT=/path/to/sdxl_or_sd15.safetensors"
        )

    workflow = json.loads(Path(args.workflow).read_text())
    prompt = build_prompt(workflow, args)
    out_dir = Path(args.output)
    base = Path(tempfile.mkdtemp(prefix="story-demo-"))
    t0 = time.time()
    try:
        return _run(base, args, prompt, checkpoints, out_dir, t0)
    except KeyboardInterrupt:  # SIGTERM raises comfy_host.Terminated: exit code 143, ComfyUI stopped too
        print("[demo] interrupted; ComfyUI stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(base, args, prompt, checkpoints, out_dir, t0) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "comfyui-demo.log"  # kept after the run, unlike the temporary base directory
    with ComfyServer(
        base, with_tiny_models=args.smoke and not args.ckpt, checkpoints=checkpoints, log_path=log_path
    ) as server:
        print(f"[demo] ComfyUI is up at {server.url} (log: {server.log_path})")
        try:
            entry = run_prompt(server, prompt, on_progress=text_progress)
        except PromptRejected as e:
            print(f"[demo] the server rejected the workflow:\n{e}", file=sys.stderr)
            return 1
        except PromptFailed as e:
            print(f"[demo] the run failed: {e}\n--- server log ---\n{server.log_tail()}", file=sys.stderr)
            return 1
        saved = download_outputs(server, entry, out_dir)
    if not saved:
        print("[demo] the workflow finished but saved no image", file=sys.stderr)
        return 1
    print(f"[demo] {len(saved)} image(s) written in {time.time() - t0:.1f}s:")
    for path in saved:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
