"""Consistent Self-Attention (and the identity bank) on the DiT families, through the seam.

The run's math is `attention.joint_consistent_run.JointConsistentRun` (pure); the family's
blocks, layouts and hooks are `patch_dit`. The patch is the UNet one's sibling: same feature
name (a MODEL holds one), same batch checks and write-run commit (inherited), but `dit` block
replaces instead of attn1 hooks, and a per-model-call context (the image grid, the text length)
put into `transformer_options` by its APPLY_MODEL wrapper.
"""

from __future__ import annotations

from typing import Any

from ..attention.consistent_run import ConsistentConfig, Mode
from ..attention.joint_consistent import POSITION_MODES
from ..attention.joint_consistent_run import JointCall, JointConfig, JointConsistentRun
from .common import StoryError
from .patch_consistent import ConsistentPatch
from .patch_core import Family, FeaturePatch, LayerHook, require_family
from .patch_dit import (
    CALL_KEY,
    DIT_FAMILIES,
    OVERRIDE,
    DiTFamily,
    attention_override,
    block_keys,
    block_replace,
    call_context,
    dit_family,
    slot_rotations,
)
from .patch_unet import SVD_UNET, UNET

POSITION_DEFAULT = "canvas"


class DiTConsistentPatch(ConsistentPatch):
    families = DIT_FAMILIES

    def __init__(self, config: JointConfig, mode: Mode | None = None):
        mode = mode or Mode()
        FeaturePatch.__init__(self, JointConsistentRun(config, mode))  # the DiT run, not the UNet one
        self.node = mode.node
        self.dm = None

    def attention_patches(self) -> dict[str, list]:
        return {}

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        self.dm = model.get_model_object("diffusion_model")
        if not family.replaces:
            return []
        keys = block_keys(family, self.dm, self.config.blocks or family.blocks(self.dm, "all"))
        return [LayerHook("dit", key, self._replace_for(key)) for key in keys]

    def _replace_for(self, key: tuple):
        return lambda previous: block_replace(key, previous, self._override)

    def _override(self, block, previous):
        return attention_override(self.family, self.dm, block, previous, self._handle)

    def _handle(self, q, k, v, mask, block, layout, call, topts, kernel):
        jcall = JointCall(
            block=block,
            layout=layout,
            chunks=tuple(int(c) for c in topts.get("cond_or_uncond") or [0]),
            sigma=float(topts["sigmas"].reshape(-1)[0]),
            sample_sigmas=topts.get("sample_sigmas"),
        )
        mode, dim = self.config.positions, q.shape[-1]

        def rotations(slots: int) -> list:
            return slot_rotations(self.family, self.dm, call, mode, slots, dim)

        return self.state.attention(q, k, v, jcall, kernel, rotations, mask)

    def apply_model(self, executor, *args, **kwargs) -> Any:
        x = args[0] if args else kwargs["x"]
        context = args[3] if len(args) > 3 else kwargs.get("c_crossattn")
        call = call_context(self.dm, x, context)
        if len(args) > 5:
            args = (*args[:5], self._inject(args[5], call), *args[6:])
        else:
            kwargs["transformer_options"] = self._inject(kwargs.get("transformer_options") or {}, call)
        return executor(*args, **kwargs)

    def _inject(self, transformer_options: dict, call) -> dict:
        options = self.inject(transformer_options)
        options[CALL_KEY] = call
        if not self.family.replaces:
            options[OVERRIDE] = self._override(None, options.get(OVERRIDE))
        return options


def joint_config(model, family: DiTFamily, base: ConsistentConfig, settings: dict, node: str) -> JointConfig:
    """The DiT settings: the shared ones from `base` (the node's ConsistentConfig), the DiT-only
    inputs (keep_rate_double/single, dit_positions) and the blocks of the `blocks` choice."""
    positions = settings.get("dit_positions", POSITION_DEFAULT)
    if positions not in POSITION_MODES:
        raise StoryError(f"{node}: dit_positions must be one of {list(POSITION_MODES)}, got {positions!r}.")
    dm = model.get_model_object("diffusion_model")
    return JointConfig(
        keep_double=float(settings.get("keep_rate_double", 0.5)),
        keep_single=float(settings.get("keep_rate_single", 0.5)),
        blocks=family.blocks(dm, base.blocks),
        positions=positions,
        warmup_steps=base.warmup_steps,
        steps=base.steps,
        schedule=base.schedule,
        window=base.window,
        seed=base.seed,
        strength=base.strength,
    )


def consistent_patch(model, config, mode: Mode | None = None, settings: dict | None = None) -> FeaturePatch:
    """The Consistent Self-Attention patch for this MODEL's family: the UNet one, or the DiT one.
    `config` is a ConsistentConfig (from the node) or, from an upstream DiT patch, a JointConfig."""
    mode = mode or Mode()
    family = require_family(model, mode.node, (UNET, SVD_UNET, *DIT_FAMILIES))
    if not isinstance(family, DiTFamily):
        return ConsistentPatch(config if isinstance(config, ConsistentConfig) else ConsistentConfig(), mode)
    if not isinstance(config, JointConfig):
        config = joint_config(model, family, config or ConsistentConfig(), settings or {}, mode.node)
    return DiTConsistentPatch(config, mode)


__all__ = ["DiTConsistentPatch", "consistent_patch", "dit_family", "joint_config"]
