"""The UNet families (SD1.x, SD2.x, SDXL and its distillations; SVD): layers and replace keys.

ComfyUI's UNet (`openaimodel.UNetModel`) calls `patches_replace["attn1"|"attn2"]` per transformer
layer, looking up (block_name, block_id, depth) first and (block_name, block_id) second, so
`lookup` does the same: a feature's replace wraps whatever the graph holds for its layer at
either granularity. `attention_layers` enumerates the transformer layers (SVD: the spatial ones;
their temporal twins receive the same key and are told apart by shape at call time).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import Family, Replace, host_class

BLOCKS = ("input", "middle", "output")
UP = ("output",)


@dataclass(frozen=True)
class UNetLayer:
    key: tuple  # (block_name, block_id, depth)
    attn1: Any  # the self-attention module (to_q, to_k, to_v, to_out)
    attn2: Any | None  # the cross-attention module


def _unet(dm) -> bool:
    cls = host_class("comfy.ldm.modules.diffusionmodules.openaimodel", "UNetModel")
    return cls is not None and isinstance(dm, cls)


def is_image_unet(dm) -> bool:
    return _unet(dm) and not getattr(dm, "use_temporal_resblocks", False)


def is_video_unet(dm) -> bool:
    return _unet(dm) and bool(getattr(dm, "use_temporal_resblocks", False))


def lookup(slot: dict, key: tuple) -> Replace | None:
    found = slot.get(key)
    return found if found is not None else slot.get(key[:2])


@dataclass(frozen=True)
class UNetFamily(Family):
    """A UNet: attention reached per transformer layer through the attn1 / attn2 replace slots."""

    def blocks(self, choice: str) -> tuple[str, ...]:
        """The block groups of a CSA `blocks` choice: "up" = the decoder (output) blocks, "all"."""
        return BLOCKS if choice == "all" else UP

    def self_attention_widths(self, model) -> dict[tuple, int]:
        """(block_name, block_id, depth) -> token width of every self-attention layer (a bank's check)."""
        widths = {}
        for layer in attention_layers(model):
            to_k = getattr(layer.attn1, "to_k", None)
            if to_k is not None and hasattr(to_k, "in_features"):
                widths[layer.key] = int(to_k.in_features)
        return widths


ALL_FEATURES = frozenset({"consistent", "bank", "isolated", "capture"})
UNET = UNetFamily(
    name="SD1.5/SD2/SDXL-family UNet", matches=is_image_unet, lookup=lookup, features=ALL_FEATURES
)
# SVD: the spatial layers share across frames; temporal calls are skipped (told apart by shape)
SVD_UNET = UNetFamily(
    name="Stable Video Diffusion UNet (spatial layers)", matches=is_video_unet, lookup=lookup
)


def attention_layers(model, blocks: tuple[str, ...] = BLOCKS) -> list[UNetLayer]:
    """Every transformer layer of the chosen block groups of a MODEL, in execution order of the keys."""
    return list(_layers(model.get_model_object("diffusion_model"), blocks))


def _layers(dm, blocks) -> Iterator[UNetLayer]:
    groups = {
        "input": list(dm.input_blocks),
        "middle": [dm.middle_block] if dm.middle_block is not None else [],
        "output": list(dm.output_blocks),
    }
    for name in BLOCKS:
        if name not in blocks:
            continue
        for block_id, block in enumerate(groups[name]):
            for module in block:
                for depth, tb in enumerate(getattr(module, "transformer_blocks", None) or []):
                    yield UNetLayer((name, block_id, depth), tb.attn1, getattr(tb, "attn2", None))
