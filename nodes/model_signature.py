"""Which model a MODEL is, as far as an identity bank cares: its family and self-attention widths."""

from __future__ import annotations

from .common import StoryError


def model_family(model_patcher) -> str | None:
    """ComfyUI's model config name (e.g. "SDXL", "SD15"), None when unknown."""
    config = getattr(getattr(model_patcher, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else None


def self_attention_widths(model_patcher) -> dict[tuple, int]:
    """(block_name, block_id, depth index) -> token width of every UNet self-attention layer."""
    dm = model_patcher.get_model_object("diffusion_model")
    groups = [("input", i, b) for i, b in enumerate(getattr(dm, "input_blocks", None) or [])]
    if getattr(dm, "middle_block", None) is not None:
        groups.append(("middle", 0, dm.middle_block))
    groups += [("output", i, b) for i, b in enumerate(getattr(dm, "output_blocks", None) or [])]
    widths = {}
    for name, block_id, block in groups:
        for module in block:
            for d, tb in enumerate(getattr(module, "transformer_blocks", None) or []):
                to_k = getattr(getattr(tb, "attn1", None), "to_k", None)
                if to_k is not None and hasattr(to_k, "in_features"):
                    widths[(name, block_id, d)] = int(to_k.in_features)
    return widths


def check_bank_fits(node: str, bank, model_patcher) -> None:
    """A clear StoryError when `bank` was written with another model family or widths."""
    check = getattr(bank, "check_model", None)
    if check is None:
        return
    family = model_family(model_patcher)
    try:
        check(family, self_attention_widths(model_patcher), model=f"the model connected to {node}")
    except ValueError as e:
        raise StoryError(f"{node}: {e}") from None
