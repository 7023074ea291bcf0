"""What the story world model draws: a picture of samples and its prompt adherence, read back.

    .venv/bin/python scripts/world_samples.py [--n 64] [--out models/story_world/samples.png]

* samples.png: row 1 world drawings, row 2 their VAE round trip, rows 3-4 the model's pictures of
  the drawings' full captions (two seeds), 20 steps euler, cfg 5, through ComfyUI's own nodes.
* Prompt adherence: --n fresh pictures of the world, each caption with every attribute kept, drawn
  by the model in one batch and read back by the attribute reader: the share of generated panels
  whose scene and character count match the caption, and of described characters (by position)
  whose kind, hair, shirt and pattern match. The same reader on the drawings themselves after a
  VAE round trip is the ceiling.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_host import host_root  # noqa: E402

for p in (str(ROOT / "tests"), str(host_root())):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

from comfy.cli_args import args as comfy_args  # noqa: E402

comfy_args.cpu = not torch.cuda.is_available()

import comfy.utils  # noqa: E402

from pack_loader import load_pack, pure, submodule  # noqa: E402


def adherence(pictures, reads) -> dict:
    """Share of matches between pictures (ground truth) and reads, per attribute."""
    attrs = pure("story_world.vocabulary").CHARACTER_ATTRIBUTES
    hits = {k: [] for k in ("scene", "count", *attrs)}
    for p, r in zip(pictures, reads, strict=True):
        hits["scene"].append(r["scene"] == p.scene)
        hits["count"].append(r["count"] == len(p.characters))
        for c in p.characters:
            seen = r["characters"][c.position]
            for a in attrs:
                hits[a].append(seen["p"] > 0.5 and seen[a] == getattr(c, a))
    return {k: sum(v) / len(v) for k, v in hits.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="pictures for the adherence figures")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--weights", default="story_world.safetensors", help="a file in models/story_world/")
    ap.add_argument("--out", default=str(ROOT / "models" / "story_world" / "samples.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    t0 = time.time()
    load_pack()
    ev = submodule("world_model.evaluation")
    sampling, reader_mod = pure("story_world.sampling"), pure("story_world.reader")
    model, clip, vae = ev.run_node("StoryDiffWorldModel", weights=args.weights)
    reader_model = reader_mod.load(ROOT / "models" / "story_world" / "reader.safetensors")
    rng = random.Random(args.seed)
    pictures = [sampling.random_picture(rng, two_probability=0.4) for _ in range(args.n)]
    captions = [sampling.caption(p, rng, keep=1.0) for p in pictures]
    s = ev.Sampling(steps=args.steps, cfg=args.cfg)
    with torch.inference_mode():
        drawings = reader_mod.to_tensor(pictures).permute(0, 2, 3, 1)
        round_trip = vae.decode(vae.encode(drawings))
        story = "\n".join(captions)
        drawn = [ev.draw_story(model, clip, vae, story, seed, s) for seed in (0, 1)]
        truth = adherence(pictures, reader_mod.read(reader_model, round_trip))
        got = [adherence(pictures, reader_mod.read(reader_model, d)) for d in drawn]
    print(f"prompt adherence on {args.n} full captions (reader; {s.steps} steps euler, cfg {s.cfg:g}), %:")
    print(f"{'':<26}" + "".join(f"{k:>9}" for k in truth))
    print(f"{'drawings via the VAE':<26}" + "".join(f"{100 * v:9.1f}" for v in truth.values()))
    for seed, g in enumerate(got):
        print(f"{'model, seed ' + str(seed):<26}" + "".join(f"{100 * v:9.1f}" for v in g.values()))
    for i, c in enumerate(captions[:8]):
        print(f"  column {i + 1}: {c}")
    rows = [drawings[:8], round_trip[:8], drawn[0][:8], drawn[1][:8]]
    grid = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0).clamp(0, 1)
    import numpy as np
    from PIL import Image

    img = Image.fromarray((grid.numpy() * 255).astype(np.uint8))
    img = img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"wrote {args.out} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
