"""Z-Image / Lumina 2 (NextDiT): one list of joint layers, RoPE, and no block replaces in the host.

The override is set for the whole model call; joint calls are told from the refiners' by their
length (caption padded to the model's multiple + image padded likewise), counted in execution
order per model call (the n-th joint call is layer n).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention.joint_consistent import JointLayout
from .base import instance_of
from .joint import CallContext, JointFamily, second_half


@dataclass(frozen=True)
class Lumina2Family(JointFamily):
    def locate(self, dm, block: tuple | None, call: CallContext, lq: int) -> tuple | None:
        gh, gw = call.grid
        img = gh * gw
        mult = int(getattr(dm, "pad_tokens_multiple", None) or 1)
        cap = call.txt_len + (-call.txt_len) % mult
        if lq != cap + img + (-img) % mult:
            return None
        index = call.joint_calls
        call.joint_calls += 1
        return ("double", index), JointLayout(cap, img, (gh, gw))


LUMINA2 = Lumina2Family(
    "Z-Image / Lumina 2",
    instance_of("comfy.ldm.lumina.model", "NextDiT"),
    double="layers",
    replaces=False,
    up=second_half,
    text_encoders=(
        ("comfy.text_encoders.z_image", "ZImageTEModel", "right", "Z-Image"),
        ("comfy.text_encoders.lumina2", "LuminaModel", "right", "Lumina 2"),
    ),
)
