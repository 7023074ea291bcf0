"""Flux.1 (dev, schnell, Kontext), Flux.2 and Chroma: double- then single-stream blocks, RoPE.

Text is [txt | img | reference latents]; text positions are all 0 (a segment of text appended
after the prompt carries the positions it would have alone). Flux.1 and Flux.2 share the host's
`Flux` class and are told apart by the number of RoPE axes (Flux.2: 4); Chroma Radiance is not
Chroma. Flux.2's text encoders left-pad, as its host does itself (exact on every host).
"""

from __future__ import annotations

from typing import Any

from .base import instance_of
from .joint import JointFamily, singles

_flux_class = instance_of("comfy.ldm.flux.model", "Flux")
_chroma_class = instance_of("comfy.ldm.chroma.model", "Chroma")
_radiance_class = instance_of("comfy.ldm.chroma_radiance.model", "ChromaRadiance")


def _flux(flux2: bool):
    def matches(dm) -> bool:
        return _flux_class(dm) and (len(dm.params.axes_dim) == 4) == flux2

    return matches


def _chroma(dm) -> bool:
    return _chroma_class(dm) and not _radiance_class(dm)


BLOCKS: dict[str, Any] = dict(double="double_blocks", single="single_blocks", up=singles)
FLUX = JointFamily(
    "Flux.1 (dev, schnell, Kontext)",
    _flux(False),
    **BLOCKS,
    features=frozenset({"consistent", "bank", "isolated", "capture"}),
    text_encoders=(("comfy.text_encoders.flux", "FluxClipModel", "right", "Flux.1"),),
    token_key="t5xxl",
)
FLUX2 = JointFamily(
    "Flux.2",
    _flux(True),
    **BLOCKS,
    text_encoders=(("comfy.text_encoders.flux", "Flux2TEModel", "left", "Flux.2"),),
)
CHROMA = JointFamily(
    "Chroma",
    _chroma,
    **BLOCKS,
    text_encoders=(("comfy.text_encoders.pixart_t5", "PixArtT5XXL", "right", "Chroma"),),
)
