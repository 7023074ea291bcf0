"""Model families: one module per family, everything the features need to know about it.

Pure Python (no ComfyUI import at import time: a family recognises the host's classes by module
path when asked), so the modules are unit-tested and type-checked without a host. The features
(nodes/patch_*.py, attention/) take a `Family` object and never ask which family it is; the
recipe for a new family is in docs/architecture.md.
"""

from __future__ import annotations

from .base import Family
from .flux import CHROMA, FLUX, FLUX2
from .joint import JointFamily
from .lumina2 import LUMINA2
from .qwen_image import QWEN_IMAGE
from .sd3 import SD3
from .unet import SVD_UNET, UNET, UNetFamily

UNET_FAMILIES: tuple[UNetFamily, ...] = (UNET, SVD_UNET)
JOINT_FAMILIES: tuple[JointFamily, ...] = (FLUX, FLUX2, CHROMA, QWEN_IMAGE, SD3, LUMINA2)
FAMILIES: tuple[Family, ...] = (*UNET_FAMILIES, *JOINT_FAMILIES)


def family_of(diffusion_model) -> Family | None:
    """The family a diffusion model belongs to (None: one the pack does not know)."""
    return next((f for f in FAMILIES if f.matches(diffusion_model)), None)


def supporting(feature: str) -> tuple[Family, ...]:
    """The families a feature ("consistent", "isolated", "capture", "bank") runs on."""
    return tuple(f for f in FAMILIES if feature in f.features)


__all__ = ["FAMILIES", "JOINT_FAMILIES", "UNET_FAMILIES", "Family", "family_of", "supporting"]
