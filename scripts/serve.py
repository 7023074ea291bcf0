"""`make serve`: ComfyUI with this pack (and the tiny test models) for the browser canvas."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host import ROOT, ComfyServer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--ckpt", default="", help="a checkpoint to make available to CheckpointLoaderSimple")
    p.add_argument("--base", default=str(ROOT / ".serve"), help="ComfyUI base directory (models/, input/, output/)")
    args = p.parse_args()
    ckpts = [Path(args.ckpt).expanduser()] if args.ckpt else []
    server = ComfyServer(Path(args.base), port=args.port, with_tiny_models=True, checkpoints=ckpts)
    server.start()
    print(f"ComfyUI with the storydiffusion pack: {server.url}  (Ctrl+C stops it; log: {server.log_path})")
    try:
        while server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
