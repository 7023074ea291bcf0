"""Object Isolated Attention on joint-attention DiTs (Flux.1, Qwen-Image) through the seam.

The math is attention/joint_isolated_branch.py; this file hooks it in:

* APPLY_MODEL wrapper: per model call, `JointIsolatedBranch.prepare` finds the step and on an
  isolating step extends the model's text input with each character's own prompt (and the scene
  prompt) as segments; the call's context goes into `transformer_options` for the blocks.
* `dit` replaces on every double and single block hand the real block an attention override
  (families/joint.py) that runs `JointIsolatedBranch.attention`.
* A family whose text positions are sequential (Qwen-Image: from `txt_start` on) would put the
  appended segments after the prompt; its replaces hand the block (and any replace inside ours)
  a `pe` where each segment carries the rotations of the positions that prompt has alone: the
  first rows of the model's own text rotations. Flux.1's text positions are all 0.
* Steps that do not isolate leave the model's input and every attention call unchanged.
"""

from __future__ import annotations

from ..attention.isolated_branch import IsolatedBranch
from ..attention.joint_isolated_branch import IsolatedCall, JointIsolatedBranch
from ..families import JOINT_FAMILIES, supporting
from ..families.joint import CALL_KEY, attention_override, block_keys, block_replace, call_context
from .patch_core import Family, LayerHook, model_input, with_context, with_transformer_options
from .patch_isolated import FEATURE, IsolatedPatch, user_errors

ISO_KEY = "storydiff_joint_isolated"  # transformer_options: this model call's IsolatedCall


def own_positions(replace):
    """A `dit` replace giving the segments their own text positions (see the module doc)."""

    def positioned(args: dict, extra: dict) -> dict:
        info = (args.get("transformer_options") or {}).get(ISO_KEY)
        if info is None or info.segments is None or "pe" not in args:
            return replace(args, extra)
        return replace({**args, "pe": info.segment_positions(args["pe"])}, extra)

    return positioned


class JointIsolatedPatch(IsolatedPatch):
    families = tuple(f for f in supporting(FEATURE) if f in JOINT_FAMILIES)
    reads: frozenset = frozenset()  # no identity bank yet: a character's first panel is its reference

    def __init__(self, branch: IsolatedBranch):
        super().__init__(branch)
        self.joint = JointIsolatedBranch(branch)

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        self.dm = model.get_model_object("diffusion_model")
        keys = block_keys(family, self.dm, family.blocks(self.dm, "all"))
        return [LayerHook("dit", key, self._replace_for(key)) for key in keys]

    def _replace_for(self, key: tuple):
        if self.family.sequential_text:
            return lambda previous: own_positions(block_replace(key, previous, self._override))
        return lambda previous: block_replace(key, previous, self._override)

    def _override(self, block, previous):
        return attention_override(self.family, self.dm, block, previous, self._handle, appended=True)

    def _handle(self, q, k, v, mask, block, layout, call, topts, kernel):
        info: IsolatedCall | None = topts.get(ISO_KEY)
        if info is None or topts.get("sigmas") is None:
            return kernel(q, k, v, mask)
        return user_errors(self.joint.attention, q, k, v, mask, block, layout, info, kernel)

    def apply_model(self, executor, *args, **kwargs):
        x, context, topts = model_input(args, kwargs)
        chunks = [int(c) for c in topts.get("cond_or_uncond") or [0]]
        mask = kwargs.get("attention_mask")
        context, new_mask, info = user_errors(
            self.joint.prepare, x.shape[0], call_context(self.dm, x, context).grid, context, mask, chunks,
            topts["sigmas"], topts.get("sample_sigmas"), x.device, self.family.name,
        )  # fmt: skip
        if new_mask is not mask:
            kwargs = {**kwargs, "attention_mask": new_mask}
        call = call_context(self.dm, x, context)

        def inject(transformer_options: dict) -> dict:
            options = self.inject(transformer_options)
            options[CALL_KEY] = call
            options[ISO_KEY] = info
            return options

        args, kwargs = with_context(args, kwargs, context)
        args, kwargs = with_transformer_options(args, kwargs, inject)
        return executor(*args, **kwargs)
