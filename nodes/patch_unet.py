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

import torch

from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from .patch_core import Family, Replace

BLOCKS = ("input", "middle", "output")


@dataclass(frozen=True)
class UNetLayer:
    key: tuple  # (block_name, block_id, depth)
    attn1: torch.nn.Module
    attn2: torch.nn.Module | None


def is_image_unet(diffusion_model) -> bool:
    return isinstance(diffusion_model, UNetModel) and not getattr(
        diffusion_model, "use_temporal_resblocks", False
    )


def is_video_unet(diffusion_model) -> bool:
    return isinstance(diffusion_model, UNetModel) and bool(
        getattr(diffusion_model, "use_temporal_resblocks", False)
    )


def lookup(slot: dict, key: tuple) -> Replace | None:
    found = slot.get(key)
    return found if found is not None else slot.get(key[:2])


UNET = Family(name="SD1.5/SD2/SDXL-family UNet", matches=is_image_unet, lookup=lookup)
SVD_UNET = Family(name="Stable Video Diffusion UNet (spatial layers)", matches=is_video_unet, lookup=lookup)


def attention_layers(model, blocks: tuple[str, ...] = BLOCKS) -> list[UNetLayer]:
    """Every transformer layer of the chosen block groups, in execution order of the keys."""
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
