"""Train the story world's attribute reader and report its held-out accuracy.

    .venv/bin/python scripts/train_world_reader.py    # -> models/story_world/reader.safetensors

Pure torch + Pillow (no ComfyUI); one torch thread by default; ~5 minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_host import pack_module  # noqa: E402


def world(dotted: str):
    """story_world.<dotted> imported without putting the pack root on sys.path."""
    return pack_module(f"story_world.{dotted}", "storydiffusion_world")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "models" / "story_world" / "reader.safetensors"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reader = world("reader")
    t0 = time.time()
    model = reader.train(args.n_train, args.epochs, args.seed)
    acc = reader.accuracy(model)
    info = {
        "command": "scripts/train_world_reader.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "held_out_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "seconds": round(time.time() - t0),
    }
    reader.save(model, Path(args.out), info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
