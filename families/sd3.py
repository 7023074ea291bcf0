"""SD3 / SD3.5 (MMDiT): joint blocks with absolute positions (added at the input, no RoPE).

A joint call is [context (+ registers) | img]; SD3.5 Medium's blocks also run an image-only
self-attention [img], a block kind of its own ("self"). Borrowed tokens carry their positions in
their features, so only the "same" positions exist here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention.joint_consistent import JointLayout
from .base import instance_of
from .joint import CallContext, JointFamily, second_half


@dataclass(frozen=True)
class SD3Family(JointFamily):
    def locate(self, dm, block: tuple | None, call: CallContext, lq: int) -> tuple | None:
        if block is None:
            return None
        gh, gw = call.grid
        img = gh * gw
        if lq == img and block[0] == "double":
            return ("self", block[1]), JointLayout(0, img, (gh, gw))
        return (block, JointLayout(lq - img, img, (gh, gw))) if lq > img else None


SD3 = SD3Family(
    "SD3 / SD3.5 (MMDiT)",
    instance_of("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper"),
    double="joint_blocks",
    rope=False,
    up=second_half,
    text_encoders=(("comfy.text_encoders.sd3_clip", "SD3ClipModel", "right", "SD3 / SD3.5"),),
)
