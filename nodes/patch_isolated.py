"""Object Isolated Attention (and Story Attention Masks' capture) through the patching seam.

The branch's math is `attention.isolated_branch.IsolatedBranch` (pure); this file only hooks
it in: per UNet transformer layer an attn2 replace (capture maps, isolated cross-attention)
and, in the up-sampling blocks, an attn1 replace (isolated self-attention), each around
whatever replace the graph holds there (see nodes/patch_core.py). The kernel handed to the
branch is the seam's `default_attention`, so another pack's attention override applies to the
isolated branch too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..attention.isolated_branch import IsolatedBranch, IsolatedInputError, wants_attn1, wants_attn2
from ..families import UNET_FAMILIES, supporting
from ..families.unet import attention_layers
from .character_plan import check_mask_aspect
from .common import StoryError, sampler_time_error
from .patch_core import Family, FeaturePatch, LayerHook, Replace, default_attention, installed

FEATURE = "isolated"


class IsolatedPatch(FeaturePatch):
    feature = FEATURE
    reads = frozenset({"bank"})  # what its references come from besides the reference panel
    families = tuple(f for f in supporting(FEATURE) if f in UNET_FAMILIES)

    def __init__(self, branch: IsolatedBranch):
        super().__init__(branch)
        self.node = branch.config.node

    @property
    def branch(self) -> IsolatedBranch:
        return self.state

    def begin(self, noise: torch.Tensor | None) -> None:
        """Before the first step: the latent batch must be the story's panels, and user masks must
        have the image's aspect ratio (both known only now); ComfyUI shows these on the sampler."""
        if noise is not None and noise.ndim >= 4:
            panels = self.branch.run.plan.panels
            if int(noise.shape[0]) != panels:
                raise sampler_time_error(
                    self.node,
                    f"the latent batch has {int(noise.shape[0])} images but the story has {panels} panels",
                    "connect the Story Prompt's panel_count to the latent's batch_size, or give the node the "
                    "story of this batch.",
                )
            check_mask_aspect(self.node, self.branch.run.user_masks, tuple(noise.shape[-2:]))
        self.branch.story_uuids = story_cond_uuids(self.guider, self.branch.config.story_cond)
        super().begin(noise)

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        hooks = []
        config = self.branch.config
        for layer in attention_layers(model):
            if wants_attn2(config, layer.key) and layer.attn2 is not None:
                hooks.append(LayerHook("attn2", layer.key, self._attn2_around(layer.key, layer.attn2)))
            if wants_attn1(config, layer.key):
                hooks.append(LayerHook("attn1", layer.key, self._attn1_around(layer.key, layer.attn1)))
        return hooks

    def _attn2_around(self, key: tuple, module) -> Callable[[Replace | None], Replace]:
        def make(previous: Replace | None) -> Replace:
            def replace(q, k, v, extra) -> torch.Tensor:
                def original(q_, k_, v_) -> torch.Tensor:
                    return (
                        previous(q_, k_, v_, extra)
                        if previous is not None
                        else default_attention(q_, k_, v_, extra)
                    )

                return user_errors(
                    self.branch.attn2,
                    key,
                    module,
                    q,
                    k,
                    v,
                    extra,
                    original,
                    _kernel(extra),
                    previous is not None,
                )

            return replace

        return make

    def _attn1_around(self, key: tuple, module) -> Callable[[Replace | None], Replace]:
        def make(previous: Replace | None) -> Replace:
            def replace(q, k, v, extra) -> torch.Tensor:
                orig = previous(q, k, v, extra) if previous is not None else default_attention(q, k, v, extra)
                return user_errors(self.branch.attn1, key, module, q, k, v, extra, orig, _kernel(extra))

            return replace

        return make


def _kernel(extra: dict) -> Callable[..., torch.Tensor]:
    def kernel(q, k, v, heads, mask=None) -> torch.Tensor:
        return default_attention(q, k, v, extra, mask=mask)

    return kernel


def user_errors(fn, *args):
    try:
        return fn(*args)
    except IsolatedInputError as e:
        raise StoryError(str(e)) from None


def story_cond_uuids(guider, story_cond) -> set | None:
    """The sampler's positive cond entries that are the story's own rows: the entry holding the
    Story Prompt's positive tensor, never an area- or mask-restricted one. Without it (a story built
    elsewhere, a conditioning re-encoded on the way) every full-frame positive entry; None when the
    sampler tells nothing."""
    entries = (getattr(guider, "conds", None) or {}).get("positive") or []
    full = [e for e in entries if isinstance(e, dict) and "area" not in e and "mask" not in e and "uuid" in e]
    mine = [e for e in full if story_cond is not None and e.get("cross_attn") is story_cond]
    chosen = mine or full
    return {e["uuid"] for e in chosen} if chosen else None


def installed_branch(model) -> IsolatedBranch | None:
    patch = installed(model, FEATURE)
    return patch.branch if patch is not None else None
