"""Shared helpers of the DiT tests: cached tiny DiT models and a KSampler run on them."""

from __future__ import annotations

import torch

_CACHE: dict = {}


def tiny_dit(family: str):
    """The tiny MODEL of a DiT family, built once per session; never mutate it, clone()."""
    if family not in _CACHE:
        from tiny_models import dit_factory

        _CACHE[family] = dit_factory.tiny_dit(family)
    return _CACHE[family]


def ksample(model, family: str, panels: int = 2, h: int = 8, w: int = 12, steps: int = 3, cfg: float = 2.0,
            seed: int = 0, positive=None, negative=None, sampler: str = "euler") -> torch.Tensor:
    """Sample `panels` images through core's KSampler node (the node a user's graph runs)."""
    import nodes
    from tiny_models import dit_factory

    positive = positive if positive is not None else dit_factory.conditioning(family, panels, seed=1)
    negative = negative if negative is not None else dit_factory.conditioning(family, panels, seed=2)
    latent = {"samples": dit_factory.empty_latent(family, panels, h, w)}
    (out,) = nodes.KSampler().sample(model, seed, steps, cfg, sampler, "simple", positive, negative, latent, denoise=1.0)
    return out["samples"]


def clear():
    _CACHE.clear()
