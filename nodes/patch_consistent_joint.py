"""Consistent Self-Attention on the joint-attention DiTs: `dit` block replaces around whatever the
graph holds for each covered block, handing the real block an attention override
(families/joint.py), and a per-model-call context (the image grid, the text length) put into
`transformer_options` by the APPLY_MODEL wrapper. A family without block replaces (Z-Image)
gets the override for the whole model call.
"""

from __future__ import annotations

from typing import Any

from ..attention.consistent_run import Call
from ..attention.joint_consistent import JointGather
from ..families import JOINT_FAMILIES, supporting
from ..families.joint import CALL_KEY, OVERRIDE, attention_override, block_keys, block_replace, call_context
from .patch_consistent import FEATURE, ConsistentPatch
from .patch_core import Family, LayerHook, model_input, with_transformer_options


class JointConsistentPatch(ConsistentPatch):
    families = tuple(f for f in supporting(FEATURE) if f in JOINT_FAMILIES)

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        self.dm = model.get_model_object("diffusion_model")
        self.covered = family.blocks(self.dm, self.config.blocks)
        if not family.replaces:
            return []
        return [
            LayerHook("dit", key, self._replace_for(key)) for key in block_keys(family, self.dm, self.covered)
        ]

    def _replace_for(self, key: tuple):
        return lambda previous: block_replace(key, previous, self._override)

    def _override(self, block, previous):
        return attention_override(self.family, self.dm, block, previous, self._handle)

    def _handle(self, q, k, v, mask, block, layout, call, topts, kernel):
        if (block[0], int(block[1])) not in self.covered:
            return kernel(q, k, v, mask)
        plan = self.run.plan(
            Call(
                layer=(block[0], int(block[1]), 0),
                rows=q.shape[0],
                tokens=layout.img_len,
                chunks=tuple(int(c) for c in topts.get("cond_or_uncond") or [0]),
                sigma=float(topts["sigmas"].reshape(-1)[0]),
                sample_sigmas=topts.get("sample_sigmas"),
                rate=self.config.block_rate(block[0]),
            )
        )
        positions, dim = self.config.positions, q.shape[-1]

        def rotations(slots: int) -> list:
            return self.family.slot_rotations(self.dm, call, positions, slots, dim)

        gather = JointGather(layout, kernel, rotations, mask)
        if plan is not None:
            self.run.record(plan, layout.img_len, gather.take(k, v))
        return self.run.attention(q, k, v, plan, gather)

    def apply_model(self, executor, *args, **kwargs) -> Any:
        x, context, _ = model_input(args, kwargs)
        call = call_context(self.dm, x, context)

        def inject(transformer_options: dict) -> dict:
            options = self.inject(transformer_options)
            options[CALL_KEY] = call
            if not self.family.replaces:
                options[OVERRIDE] = self._override(None, options.get(OVERRIDE))
            return options

        args, kwargs = with_transformer_options(args, kwargs, inject)
        return executor(*args, **kwargs)
