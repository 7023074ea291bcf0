"""Qwen-Image: one list of joint blocks, RoPE with sequential text positions.

Text is [txt | img | reference latents]; text positions run from a start the image fixes, so text
appended after the prompt sits at later positions (Isolated Attention gives its segments their
own: `sequential_text`). Story Prompt right-pads the panels with a text mask, which the host
honours where its model_base passes `attention_mask` (ComfyUI 0.33.0; 0.3.75 drops it). Character
tokens are found by text span in the Qwen2 BPE context (nodes/qwen_tokens.py, tokenizer key
`qwen25_7b`).
"""

from __future__ import annotations

import inspect

from .base import host_class, instance_of
from .joint import JointFamily, second_half


def host_passes_mask() -> bool:
    """Whether this host's Qwen-Image model_base hands the conditioning's `attention_mask` to the
    model (ComfyUI 0.33.0 does and its blocks mask the text keys; 0.3.75 drops it)."""
    cls = host_class("comfy.model_base", "QwenImage")
    try:
        return cls is not None and "attention_mask" in inspect.getsource(cls.extra_conds)
    except (OSError, TypeError):
        return False


QWEN_IMAGE = JointFamily(
    "Qwen-Image",
    instance_of("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel"),
    double="transformer_blocks",
    up=second_half,
    sequential_text=True,
    features=frozenset({"consistent", "bank", "isolated", "capture"}),
    text_encoders=(("comfy.text_encoders.qwen_image", "QwenImageTEModel", "right", "Qwen-Image"),),
    mask_honoured=host_passes_mask,
    token_key="qwen25_7b",
)
