"""How much the story world model uses its caption: the training loss with each picture's own caption
against a shuffled caption and the empty one, at fixed timesteps, on held-out world pictures.

    .venv/bin/python scripts/world_caption_gap.py [--weights models/story_world/story_world.safetensors]

The loss is the one the file's model was trained for (eps or v, from its metadata) under white noise
(what a sampler starts from) and under the trainer's low-frequency noise. A model that ignores its
caption shows equal columns; the ratio shuffled/true is how much the caption explains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_host import host_root, pack_module  # noqa: E402

sys.path.insert(0, str(host_root()))

import safetensors  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from comfy.cli_args import args as comfy_args  # noqa: E402

comfy_args.cpu = not torch.cuda.is_available()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(ROOT / "models" / "story_world" / "story_world.safetensors"))
    ap.add_argument("--n", type=int, default=128, help="held-out pictures")
    ap.add_argument("--timesteps", default="100,300,500,700,900,999")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    build, tr = pack_module("world_model.build"), pack_module("world_model.training")
    with safetensors.safe_open(args.weights, framework="pt") as f:
        meta = f.metadata()
    prediction = meta.get("prediction", "eps")
    patcher, clip, vae = build.load(Path(args.weights))
    model = patcher.model
    unet = model.diffusion_model
    imgs, caps = tr.images_for(range(90_000_000, 90_000_000 + args.n), 0, 0.6)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        z0 = model.process_latent_in(vae.encode(imgs.permute(0, 2, 3, 1)))
        ctx = torch.cat([clip.encode_from_tokens(clip.tokenize(c)) for c in caps])
        contexts = {
            "true": ctx,
            "shuffled": ctx[torch.randperm(len(caps), generator=g)],
            "empty": clip.encode_from_tokens(clip.tokenize("")).expand_as(ctx),
        }
        acp = 1.0 / (1.0 + model.model_sampling.sigmas**2)
        command = json.loads(meta.get("info", "{}")).get("command")
        print(f"{Path(args.weights).name}: {prediction}-prediction, {command}")
        print(f"{'noise':>10} {'t':>5} " + " ".join(f"{k:>9}" for k in contexts) + "  shuffled/true")
        for noise in ("white", "low-freq"):
            for t_val in (int(x) for x in args.timesteps.split(",")):
                t = torch.full((len(caps),), t_val)
                eps = torch.randn(z0.shape, generator=g)
                if noise == "low-freq":
                    eps = tr.low_frequency_noise(eps, g, 0.6, 0.3)
                a = acp[t].view(-1, 1, 1, 1)
                xt = a.sqrt() * z0 + (1 - a).sqrt() * eps
                target = eps if prediction == "eps" else tr.v_target(z0, eps, a)
                loss = {
                    k: F.mse_loss(unet(xt, t.float(), context=c), target).item() for k, c in contexts.items()
                }
                print(
                    f"{noise:>10} {t_val:>5} "
                    + " ".join(f"{v:9.5f}" for v in loss.values())
                    + f"  {loss['shuffled'] / loss['true']:.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
