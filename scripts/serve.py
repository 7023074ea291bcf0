"""`make serve`: ComfyUI with this pack for the browser canvas.

    make serve                                  # the pack only; checkpoints from .serve/models/checkpoints
    make serve CKPT=/path/to/sdxl.safetensors   # that checkpoint offered to Load Checkpoint
    make serve ARGS=--tiny-models               # also the test-only tiny random-weight model nodes

Ctrl+C, SIGINT or SIGTERM (docker stop, systemd) stops ComfyUI and waits for it to exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host import ROOT, ComfyServer, Terminated  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--ckpt", default="", help="a checkpoint to make available to CheckpointLoaderSimple")
    p.add_argument(
        "--base", default=str(ROOT / ".serve"), help="ComfyUI base directory (models/, input/, output/)"
    )
    p.add_argument(
        "--tiny-models",
        action="store_true",
        help="also load the test-only tiny random-weight model nodes (StoryTestTiny*: noise, for smoke runs)",
    )
    args = p.parse_args(argv)
    ckpts = [Path(args.ckpt).expanduser()] if args.ckpt else []
    server = ComfyServer(
        Path(args.base), port=args.port, with_tiny_models=args.tiny_models, checkpoints=ckpts
    )
    try:
        server.start()
        print(
            f"ComfyUI with the storydiffusion pack: {server.url}  (Ctrl+C stops it; log: {server.log_path})",
            flush=True,
        )
        if not ckpts and not args.tiny_models:
            print(
                f"Load Checkpoint lists the files in {Path(args.base) / 'models' / 'checkpoints'}; "
                "or: make serve CKPT=/path/to/model.safetensors (ARGS=--tiny-models adds the tiny test "
                "models)",
                flush=True,
            )
        while server.proc.poll() is None:
            time.sleep(0.5)
        print(f"ComfyUI exited with code {server.proc.returncode} (log: {server.log_path})", file=sys.stderr)
        return server.proc.returncode or 1
    except (KeyboardInterrupt, Terminated):
        print("stopping ComfyUI ...", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
