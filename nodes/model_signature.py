"""Which model a MODEL is, as far as an identity bank cares: its family and self-attention widths."""

from __future__ import annotations

from ..families import family_of
from .common import StoryError
from .patch_core import model_family_name


def model_family(model_patcher) -> str | None:
    """ComfyUI's model config name (e.g. "SDXL", "SD15"), None when there is no MODEL."""
    return model_family_name(model_patcher) if hasattr(model_patcher, "get_model_object") else None


def self_attention_widths(model_patcher) -> dict[tuple, int]:
    """(block_name, block_id, depth index) -> token width of every UNet self-attention layer
    (empty for a family that does not list them: the family name alone, and the read's width
    check, then decide)."""
    if not hasattr(model_patcher, "get_model_object"):
        return {}
    family = family_of(model_patcher.get_model_object("diffusion_model"))
    return family.self_attention_widths(model_patcher) if family is not None else {}


def check_bank_fits(node: str, bank, model_patcher) -> None:
    """A clear StoryError when `bank` was written with another model family or widths."""
    check = getattr(bank, "check_model", None)
    if check is None:  # a duck-typed bank (.characters / .tokens only) carries no model
        return
    try:
        check(
            model_family(model_patcher),
            self_attention_widths(model_patcher),
            model=f"the model connected to {node}",
        )
    except ValueError as e:
        raise StoryError(f"{node}: {e}") from None
