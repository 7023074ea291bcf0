"""Draw the benchmark stories with the story world model through the pack's nodes, and read them back.

Nodes are looked up in ComfyUI's NODE_CLASS_MAPPINGS by class_type and called with their public
inputs, as a graph would (Story Prompt -> [Consistent Self-Attention / Identity Bank / Isolated
Attention] -> KSampler -> VAE Decode). Needs a ComfyUI host with the pack loaded.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch


def run_node(class_type: str, **inputs):
    import nodes as comfy_nodes  # ComfyUI's top-level nodes.py

    cls = comfy_nodes.NODE_CLASS_MAPPINGS[class_type]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def widget_defaults(class_type: str) -> dict:
    """The node's default widget values, as a freshly added node has them."""
    import nodes as comfy_nodes

    spec = comfy_nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            if len(s) > 1 and isinstance(s[1], dict) and "default" in s[1]:
                out[name] = s[1]["default"]
    return out


@dataclass
class Sampling:
    steps: int = 20
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    size: int = 64  # the world model draws 64x64 (8x8 latents)


def draw_story(model, clip, vae, story_text: str, seed: int, s: Sampling, patch=None):
    """IMAGE [P,H,W,3] of the story's panels; patch(model, story) -> model applies a setting.
    Runs under inference mode, as ComfyUI's executor runs nodes."""
    with torch.inference_mode():
        return _draw_story(model, clip, vae, story_text, seed, s, patch)


def _draw_story(model, clip, vae, story_text, seed, s, patch):
    positive, negative, story, _captions, count = run_node(
        "StoryDiffPrompt", clip=clip, story=story_text, style="(No style)", negative=""
    )
    m = patch(model, story) if patch is not None else model
    latent = run_node("EmptyLatentImage", width=s.size, height=s.size, batch_size=count)[0]
    samples = run_node(
        "KSampler",
        model=m,
        seed=seed,
        steps=s.steps,
        cfg=s.cfg,
        sampler_name=s.sampler,
        scheduler=s.scheduler,
        positive=positive,
        negative=negative,
        latent_image=latent,
        denoise=1.0,
    )[0]
    return run_node("VAEDecode", vae=vae, samples=samples)[0]


def csa(model, **overrides):
    settings = dict(widget_defaults("StoryDiffConsistentSelfAttention"), **overrides)
    return run_node("StoryDiffConsistentSelfAttention", model=model, **settings)[0]


def isolated(model, clip, story, **overrides):
    settings = dict(widget_defaults("StoryDiffIsolatedAttention"), **overrides)
    return run_node("StoryDiffIsolatedAttention", model=model, clip=clip, story=story, **settings)[0]


def bank_read_model(model, clip, vae, one_story, seed: int, s: Sampling, csa_overrides=None):
    """Identity bank: a write run of solo panels of the character (CSA defaults), then a read model."""
    base = csa(model, **(csa_overrides or {}))
    holder = {}

    def write(m, story):
        wm, bank = run_node("StoryDiffIdentityBankWrite", model=m, story=story)
        holder["bank"] = bank
        return wm

    draw_story(base, clip, vae, one_story.write_text(), seed + 1000, s, patch=lambda m, st: write(base, st))
    return lambda m, story: run_node(
        "StoryDiffIdentityBankRead", model=base, bank=holder["bank"], story=story
    )[0]


def mean_sd(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def images_nchw(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float()


def reader_accuracy_through_vae(vae, reader_model, n: int = 200, seed: int = 4242) -> dict:
    """The reader on held-out world pictures passed through the model's VAE (encode + decode): how well
    it reads pictures as soft as the model's own (ground truth known). Per head, as reader.accuracy."""
    import random

    from ..story_world import reader as reader_mod
    from ..story_world.sampling import random_picture
    from ..story_world.vocabulary import CHARACTER_ATTRIBUTES

    rng = random.Random(seed)
    pics = [random_picture(rng, two_probability=0.4) for _ in range(n)]
    with torch.inference_mode():
        images = reader_mod.to_tensor(pics).permute(0, 2, 3, 1)
        decoded = vae.decode(vae.encode(images))
        reads = reader_mod.read(reader_model, decoded)
    hits = {k: [] for k in ("present", *CHARACTER_ATTRIBUTES, "scene", "count")}
    for p, r in zip(pics, reads, strict=True):
        hits["scene"].append(r["scene"] == p.scene)
        hits["count"].append(r["count"] == len(p.characters))
        for pos in ("left", "right"):
            c = next((c for c in p.characters if c.position == pos), None)
            hits["present"].append((r["characters"][pos]["p"] > 0.5) == (c is not None))
            if c is not None:
                for a in CHARACTER_ATTRIBUTES:
                    hits[a].append(r["characters"][pos][a] == getattr(c, a))
    return {k: sum(v) / len(v) for k, v in hits.items()}
