"""The inputs of Consistent Self-Attention that only DiT models read (optional: older workflows load)."""

from __future__ import annotations

from ..attention.joint_consistent import POSITION_MODES

POSITION_DEFAULT = "canvas"


def joint_inputs() -> dict:
    return {
        "keep_rate_double": (
            "FLOAT",
            {
                "default": 0.5,
                "min": 0.0,
                "max": 1.0,
                "step": 0.05,
                "tooltip": "DiT models (Flux, Chroma, Qwen-Image, SD3.5, Z-Image): share of each panel's "
                "image tokens the other panels see in double-stream / joint blocks (and SD3.5 Medium's "
                "image self-attention). Text is never shared.",
            },
        ),
        "keep_rate_single": (
            "FLOAT",
            {
                "default": 0.5,
                "min": 0.0,
                "max": 1.0,
                "step": 0.05,
                "tooltip": "DiT models with single-stream blocks (Flux.1, Flux.2, Chroma): share of image "
                "tokens seen there.",
            },
        ),
        "dit_positions": (
            list(POSITION_MODES),
            {
                "default": POSITION_DEFAULT,
                "tooltip": "RoPE DiTs: where borrowed tokens sit. 'canvas' = to the right of the panel, as "
                "in one wide multi-panel image (no two tokens share a position); 'index' = on the "
                "reference-image index axis, as Kontext/Flux.2 reference latents; 'same' = at the panel's "
                "own grid positions (the position conflict). SD3 ignores it (its positions are added to "
                "the features).",
            },
        ),
    }
