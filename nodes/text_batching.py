"""How Story Prompt batches panel contexts of different lengths, decided per text-encoder family.

ComfyUI batches contexts of different lengths by tiling each to the LCM of the lengths
(CONDCrossAttn). That is exact for cross-attention (UNets, where every key is text: duplicates
split the softmax evenly), but not for joint-attention DiTs, where text and image tokens share
one softmax: r copies of a prompt give it r times its weight against the image, with RoPE text
positions (Qwen-Image, Flux.2) the copies sit at other positions, and unpadded text encoders
(Qwen2.5-VL, Qwen3, Mistral: min_length 1) turn panels of 21, 20 and 32 tokens into 3360.

So the joint-attention families are padded to the longest panel and given a text attention mask
(`attention_mask` in the conditioning, [P, T] long, 1 = token, 0 = padding: what the host's text
encoders return). The family is told by the CLIP's text-encoder model class (`cond_stage_model`,
listed by each family module's `text_encoders`), since Story Prompt never sees the diffusion model:

* Qwen-Image (QwenImageTEModel): zero-padded on the right (its text positions run from a start
  the image fixes, so real tokens keep the positions they have alone); the host honours the mask
  where `model_base.QwenImage.extra_conds` passes `attention_mask` (ComfyUI 0.33.0: exact per panel;
  0.3.75: ignored, padding gets some weight -> warning).
* Flux.2 (Flux2TEModel: Mistral, Klein's Qwen3): zero-padded on the LEFT, the host's own convention
  (model_base.Flux2 left-pads every context with zeros to 512 tokens, unmasked): exact per panel
  while the longest panel has at most 512 tokens, on every host.
* Flux.1 (FluxClipModel, T5 padded to 256), Chroma (PixArt's T5, unpadded), SD3 / SD3.5
  (SD3ClipModel, T5 min 77), Z-Image / Lumina 2 (ZImageTEModel, LuminaModel): zero-padded on the
  right with the mask; their hosts' joint attention ignores a text mask (Flux: only an image-shaped
  mask; Lumina 2: in the context refiner at most), so unequal lengths are warned about.
* Everything else (SD1.x, SDXL, ... cross-attention): tiled as before, bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..families import FAMILIES
from ..families.base import host_class


@dataclass(frozen=True)
class TextFamily:
    name: str
    side: str  # "tile" | "right" | "left"
    honoured: bool  # the host's model gives padded tokens no weight (or pads exactly so itself)


TILE = TextFamily("cross-attention", "tile", True)


def text_family(clip) -> TextFamily:
    """The batching of the CLIP's family (TILE for anything not a joint-attention DiT's encoder):
    the model families' `text_encoders` (families/) say which encoders pad, on which side."""
    model = getattr(clip, "cond_stage_model", None)
    for family in FAMILIES:
        for module, name, side, label in family.text_encoders:
            cls = host_class(module, name)
            if cls is not None and isinstance(model, cls):
                return TextFamily(label, side, side == "left" or family.mask_honoured())
    return TILE


def tile_tokens(cond: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat a [1, T, C] context along tokens up to `length` (a multiple of T).

    Repeating every key/value pair leaves cross-attention unchanged (softmax weights split evenly
    over duplicates), which is how ComfyUI itself batches contexts of different lengths.
    """
    reps = length // cond.shape[1]
    return cond.repeat(1, reps, 1) if reps > 1 else cond


def pad_tokens(conds: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, T_i, C] contexts -> ([P, T, C] zero-padded to the longest, [P, T] long mask: 1 = token)."""
    length = max(c.shape[1] for c in conds)
    rows, masks = [], []
    for c in conds:
        pad = length - c.shape[1]
        zeros = c.new_zeros(1, pad, c.shape[2])
        ones = torch.ones(1, c.shape[1], dtype=torch.long)
        none = torch.zeros(1, pad, dtype=torch.long)
        rows.append(torch.cat([zeros, c] if side == "left" else [c, zeros], dim=1))
        masks.append(torch.cat([none, ones] if side == "left" else [ones, none], dim=1))
    return torch.cat(rows, dim=0), torch.cat(masks, dim=0)


def batch_contexts(conds: list[torch.Tensor], family: TextFamily) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The panels' contexts as one [P, T, C] batch and its text mask (None: no padding)."""
    if family.side == "tile":
        length = math.lcm(*[c.shape[1] for c in conds])
        return torch.cat([tile_tokens(c, length) for c in conds], dim=0), None
    cond, mask = pad_tokens(conds, family.side)
    return cond, (mask if not bool(mask.all()) else None)


def unequal_warning(family: TextFamily, lengths: list[int]) -> str | None:
    """The user's warning when panels of different lengths reach a host that ignores the mask."""
    if family.honoured or len(set(lengths)) < 2:
        return None
    if family.name == "Qwen-Image":
        why = "this ComfyUI's Qwen-Image drops the mask (ComfyUI 0.33.0 honours it)"
        fix = ", or update ComfyUI"
    else:
        why, fix = f"ComfyUI's {family.name} joint attention ignores a text mask", ""
    return (
        f"Story Prompt: the panels' prompts encode to {', '.join(map(str, lengths))} tokens; {family.name} "
        f"gets them zero-padded to {max(lengths)} with a text attention mask, but {why}: the padding takes "
        "some attention weight, so shorter panels drift from the same prompt sampled alone. Fix: write "
        f"panels that encode to the same number of tokens{fix}."
    )
