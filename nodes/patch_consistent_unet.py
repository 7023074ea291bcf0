"""Consistent Self-Attention on UNets: an attn1 patch and, per transformer layer of the covered
blocks, an attn1 replace around whatever replace the graph holds there (see patch_core.py).

The attn1 patch sees the layer's input after norm1: a bank write records it there, a read appends
the bank tokens of the batch's characters to the context so the layer projects them. Both it and
the replace of one block call share one plan (noted in the call's transformer_options).
"""

from __future__ import annotations

import torch

from ..attention.consistent import TokenGather, downscale_level
from ..attention.consistent_run import Call, Plan
from ..families import UNET_FAMILIES, supporting
from ..families.unet import attention_layers
from .patch_consistent import FEATURE, ConsistentPatch
from .patch_core import Family, LayerHook, Replace, default_attention

PLAN_KEY = "storydiff_consistent_plan"  # per-block-call note from the attn1 patch to the replace


class UNetConsistentPatch(ConsistentPatch):
    families = tuple(f for f in supporting(FEATURE) if f in UNET_FAMILIES)

    def attention_patches(self) -> dict[str, list]:
        return {"attn1_patch": [self.attn1_patch]}

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        self.groups = family.blocks(self.config.blocks)
        return [
            LayerHook("attn1", layer.key, self._replace_around)
            for layer in attention_layers(model, self.groups)
        ]

    def plan(self, rows: int, tokens: int, extra: dict) -> Plan | None:
        """The plan of this block call (made by whichever of the attn1 patch and replace runs first)."""
        plan = extra.get(PLAN_KEY)
        if plan is None:
            call = self._call(rows, tokens, extra)
            plan = self.run.plan(call) if call is not None else None
            if plan is not None:
                extra[PLAN_KEY] = plan
        return plan

    def _call(self, rows: int, tokens: int, extra: dict) -> Call | None:
        block, shape = extra.get("block"), extra.get("activations_shape")
        if block is None or block[0] not in self.groups or shape is None or extra.get("sigmas") is None:
            return None
        h, w = int(shape[-2]), int(shape[-1])
        if rows != int(shape[0]) or tokens != h * w:
            return None  # an SVD temporal block, or an unknown layout
        original = extra.get("original_shape")
        level = downscale_level(tuple(original[-2:]), (h, w)) if original is not None else None
        return Call(
            layer=(block[0], int(block[1]), int(extra.get("block_index", 0))),
            rows=rows,
            tokens=tokens,
            chunks=tuple(extra.get("cond_or_uncond") or [0]),
            sigma=float(extra["sigmas"].reshape(-1)[0]),
            sample_sigmas=extra.get("sample_sigmas"),
            rate=self.config.level_rate(level),
        )

    def attn1_patch(self, n, context, value, extra) -> tuple:
        plan = self.plan(n.shape[0], n.shape[1], extra)
        if plan is None:
            return n, context, value
        self.run.record(plan, n.shape[1], TokenGather.take(n))
        if self.mode.kind == "read" and plan.active:
            return TokenGather.append_bank(self.run, plan, n, context, value)
        return n, context, value

    def _replace_around(self, previous: Replace | None) -> Replace:
        def replace(q, k, v, extra) -> torch.Tensor:
            def kernel(q_, k_, v_, heads) -> torch.Tensor:
                if previous is not None:
                    return previous(q_, k_, v_, extra)
                return default_attention(q_, k_, v_, extra)

            gather = TokenGather(extra["n_heads"], kernel, self.run.gather)
            return self.run.attention(q, k, v, self.plan(q.shape[0], q.shape[1], extra), gather)

        return replace
