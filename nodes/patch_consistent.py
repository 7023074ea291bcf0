"""Consistent Self-Attention (and the identity bank) through the pack's patching seam.

The run's math is `attention.consistent_run.ConsistentRun` (pure); this file only hooks it in:
an attn1 patch and, per transformer layer of the chosen blocks, an attn1 replace around
whatever replace the graph holds there (see nodes/patch_core.py). A write run copies the
recorded tokens into its bank only when sampling completes, so an interrupted write leaves the
bank unchanged.
"""

from __future__ import annotations

import torch

from ..attention.consistent_run import ConsistentConfig, ConsistentRun, Mode
from .common import sampler_time_error
from .patch_core import Family, FeaturePatch, LayerHook, Replace, default_attention
from .patch_unet import SVD_UNET, UNET, attention_layers

FEATURE = "consistent"


class ConsistentPatch(FeaturePatch):
    feature = FEATURE
    families = (UNET, SVD_UNET)  # SVD: the spatial layers share across frames; temporal calls are skipped

    def __init__(self, config: ConsistentConfig, mode: Mode | None = None):
        mode = mode or Mode()
        super().__init__(ConsistentRun(config, mode))
        self.node = mode.node

    @property
    def config(self) -> ConsistentConfig:
        return self.state.config

    @property
    def mode(self) -> Mode:
        return self.state.mode

    def attention_patches(self) -> dict[str, list]:
        return {"attn1_patch": [self.attn1_patch]}

    def attn1_patch(self, n, context, value, extra) -> tuple:
        return self.state.attn1_patch(n, context, value, extra)

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        blocks = ("input", "middle", "output") if self.config.blocks == "all" else ("output",)
        return [
            LayerHook("attn1", layer.key, self._replace_around) for layer in attention_layers(model, blocks)
        ]

    def _replace_around(self, previous: Replace | None) -> Replace:
        def replace(q, k, v, extra) -> torch.Tensor:
            def kernel(q_, k_, v_, heads) -> torch.Tensor:
                return (
                    previous(q_, k_, v_, extra)
                    if previous is not None
                    else default_attention(q_, k_, v_, extra)
                )

            return self.state.attention(q, k, v, extra, kernel)

        return replace

    def begin(self, noise: torch.Tensor | None) -> None:
        self._check_batch(int(noise.shape[0]) if noise is not None else None)
        self.state.reset(self.clock)

    def end(self, completed: bool) -> None:
        if completed and self.mode.kind == "write" and self.state.staging is not None:
            self.mode.bank.update_from(self.state.staging)
        self.state.release()

    def _check_batch(self, batch: int | None) -> None:
        mode = self.mode
        if batch is None:
            return
        if mode.kind == "plain":
            if mode.tags is not None and len(mode.tags) != batch:
                raise sampler_time_error(
                    mode.node,
                    f"the latent's batch_size is {batch} but the story's panel_count is {len(mode.tags)}",
                    "connect the Story Prompt's panel_count to the latent's batch_size (one image per "
                    "panel).",
                )
            return
        if len(mode.labels) not in (1, batch):
            raise sampler_time_error(
                mode.node,
                f"{len(mode.labels)} panels/characters are given but the latent batch is {batch}",
                "connect the Story Prompt's panel_count to the latent's batch_size (or give one name per "
                "image).",
            )
        if mode.kind == "read":
            missing = sorted({c for names in mode.labels for c in names} - set(mode.bank.characters))
            if missing:
                have = ", ".join(f"[{c}]" for c in mode.bank.characters) or "nothing yet"
                lacking = ", ".join(f"[{c}]" for c in missing)
                raise sampler_time_error(
                    mode.node,
                    f"the identity bank has no tokens for {lacking} (it holds {have})",
                    "write them first (Identity Bank Write samples and returns the bank), load a bank that "
                    "has them, or untag them.",
                )
