"""The node inputs of Consistent Self-Attention that only DiT models read, and their install step."""

from __future__ import annotations

from ..attention.identity_bank import IdentityBank
from ..attention.joint_consistent import POSITION_MODES
from ..attention.joint_consistent_run import JointConfig, JointConsistentRun, JointMode
from ..attention.token_sampling import parse_probability_schedule
from .common import StoryError
from .patch_dit import dit_family, install_dit, installed_dit

DEFAULTS = {"keep_rate_double": 0.5, "keep_rate_single": 0.5, "dit_positions": "canvas"}


def dit_inputs() -> dict:
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
                "default": "canvas",
                "tooltip": "RoPE DiTs: where borrowed tokens sit. 'canvas' = to the right of the panel, as "
                "in one wide multi-panel image (no two tokens share a position); 'index' = on the "
                "reference-image index axis, as Kontext/Flux.2 reference latents; 'same' = at the panel's "
                "own grid positions (the position conflict). SD3 ignores it (its positions are added to "
                "the features).",
            },
        ),
    }


def is_dit(model) -> bool:
    return hasattr(model, "get_model_object") and dit_family(model) is not None


def joint_config(model, settings: dict, node: str) -> JointConfig:
    family = dit_family(model)
    dm = model.get_model_object("diffusion_model")
    try:
        schedule = parse_probability_schedule(settings.get("apply_probability", "0.7, 0.9@40"))
    except ValueError as e:
        raise StoryError(f"{node}: apply_probability: {e}") from None
    positions = settings.get("dit_positions", DEFAULTS["dit_positions"])
    if positions not in POSITION_MODES:
        raise StoryError(f"{node}: dit_positions must be one of {list(POSITION_MODES)}, got {positions!r}.")
    start, end = float(settings.get("start_percent", 0.0)), float(settings.get("end_percent", 100.0))
    if start > 1.0 or end > 1.0:  # the node's 0..100 scale
        start, end = start / 100.0, end / 100.0
    return JointConfig(
        keep_double=float(settings.get("keep_rate_double", DEFAULTS["keep_rate_double"])),
        keep_single=float(settings.get("keep_rate_single", DEFAULTS["keep_rate_single"])),
        blocks=family.blocks(dm, settings.get("blocks", "up")),
        positions=positions,
        warmup_steps=int(settings.get("warmup_steps", 1)),
        start=start,
        end=end,
        schedule=schedule,
        window=int(settings.get("window", 0)),
        seed=int(settings.get("seed", 0)),
        strength=float(settings.get("strength", 1.0)),
    )


def install_consistent_dit(model, settings: dict, node: str, mode: JointMode | None = None):
    return install_dit(
        model, JointConsistentRun(joint_config(model, settings, node), mode or JointMode(node=node)), node
    )


def install_bank_dit(model, mode: JointMode):
    """Identity Bank Write/Read on a DiT: the CSA settings upstream (else the defaults) with a bank mode."""
    upstream = installed_dit(model)
    config = upstream.state.config if upstream is not None else joint_config(model, {}, mode.node)
    return install_dit(model, JointConsistentRun(config, mode), mode.node)


__all__ = [
    "IdentityBank",
    "JointMode",
    "dit_inputs",
    "install_bank_dit",
    "install_consistent_dit",
    "is_dit",
    "joint_config",
]
