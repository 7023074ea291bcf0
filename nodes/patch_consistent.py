"""Consistent Self-Attention (and the identity bank) through the pack's patching seam.

The run's math is `attention.consistent_run.ConsistentRun` (pure, one run for every family);
this file holds what its patch does on every family: the batch checks when sampling starts and
the write run's commit (the recorded tokens go into the bank only when sampling completes, so an
interrupted write leaves the bank unchanged). How the run is hooked in is the family kind's:
patch_consistent_unet.py (attn1 patch + replaces) and patch_consistent_joint.py (block replaces
+ an attention override); `consistent_patch` picks the one of the MODEL's family.
"""

from __future__ import annotations

import logging

import torch

from ..attention.consistent_run import ConsistentConfig, ConsistentRun, Mode
from ..families import supporting
from .common import sampler_time_error
from .patch_core import FeaturePatch, require_family

FEATURE = "consistent"


class ConsistentPatch(FeaturePatch):
    feature = FEATURE

    def __init__(self, config: ConsistentConfig, mode: Mode | None = None):
        mode = mode or Mode()
        super().__init__(ConsistentRun(config, mode))
        self.node = mode.node

    @property
    def run(self) -> ConsistentRun:
        return self.state

    @property
    def config(self) -> ConsistentConfig:
        return self.state.config

    @property
    def mode(self) -> Mode:
        return self.state.mode

    def begin(self, noise: torch.Tensor | None) -> None:
        self._check_batch(int(noise.shape[0]) if noise is not None else None)
        self.state.reset(self.clock)

    def end(self, completed: bool) -> None:
        if completed and self.mode.kind == "write" and self.state.staging is not None:
            self.mode.bank.update_from(self.state.staging)
            logging.info("%s: %s", self.mode.node, self.mode.bank.summary())
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


def consistent_patch(model, config: ConsistentConfig | None, mode: Mode | None = None) -> ConsistentPatch:
    """The Consistent Self-Attention patch for this MODEL, hooked in the way of its family's kind."""
    from .patch_consistent_joint import JointConsistentPatch
    from .patch_consistent_unet import UNetConsistentPatch

    mode = mode or Mode()
    family = require_family(model, mode.node, supporting(FEATURE))
    glue = next(p for p in (UNetConsistentPatch, JointConsistentPatch) if family in p.families)
    return glue(config or ConsistentConfig(), mode)
