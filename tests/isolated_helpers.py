"""Shared set-up for the Object Isolated Attention tests: a two-character story on tiny models."""

from __future__ import annotations

import torch

import comfy.sample

from pack_loader import submodule

TWO_CHARACTERS = """[Bob]: a man with short black hair, red jacket
[Alice]: a woman with long silver hair, green dress
[Bob] waits at a bus stop
[Alice] reads in a library
[Bob] and [Alice] walk in a park"""


def encode_story(clip, text=TWO_CHARACTERS, style="(No style)"):
    node = submodule("nodes.story_prompt").StoryPrompt()
    positive, negative, story, _, count = node.encode(clip, text, style, "")
    return positive, negative, story, count


def sample(model, positive, negative, panels, steps=4, cfg=5.0, size=(8, 8), seed=0, sampler="euler"):
    latent = torch.zeros(panels, 4, *size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, "normal", positive, negative, latent, seed=seed
    )


def isolated(model, clip, story, **kw):
    node = submodule("nodes.isolated_attention").IsolatedAttention()
    args = dict(strength=1.1, reweight=1.0, start_percent=0.0, end_percent=1.0)
    args.update(kw)
    (patched,) = node.patch(model, clip, story, **args)
    return patched


def state_of(model):
    """The Isolated Attention branch (config + run) installed on a MODEL."""
    return submodule("nodes.patch_isolated").installed_branch(model)


def with_attention_override(model, record):
    """A clone whose attention calls are seen by `record(q, k, v, heads, mask)` before the kernel runs,
    installed the way another pack would: transformer_options["optimized_attention_override"]."""
    m = model.clone()

    def override(func, q, k, v, heads, mask=None, **kwargs):
        record(q, k, v, heads, mask)
        return func(q, k, v, heads, mask=mask, **kwargs)

    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    return m


# The tiny models' random weights give cross-attention maps that are noise (Otsu separation about
# 0.63): Isolated Attention's thin-evidence guard rightly finds no character in them. Tests of the
# plumbing that need online masks on those maps switch the guard off explicitly.
NO_GUARD = dict(min_separation=0.0, evidence_steps=1, min_area=0.0)
