"""Isolated cross-attention (OIA §III-D, Eq. 6): per-character prompts attended separately.

Pure torch (no ComfyUI import). The scene prompt and each character's own description prompt
are attended *separately* by the same queries, then blended per region:

    out = Σ_c M_c · CA(q, ctx_c) + (1 − Σ_c M_c) · CA(q, ctx_scene)

Decisions: masks are binary and disjoint (after the CV rule), so inside character A's region
the output is exactly CA(q, ctx_A) (no share of the scene prompt kept, unlike AutoStudio's 0.3)
and the background keeps the scene prompt. ctx_A is A's regional prompt: by default the panel's
line with only A's tag filled in (action and style kept, other characters' descriptions
removed; see story/syntax.py), because with λ > 1 a description-only prompt would push the
panel's action out of the character. Only the cond half of the CFG batch is isolated;
the uncond half is untouched (see attention/isolated_branch.py).
"""

from __future__ import annotations

import torch


def regional_blend(scene_out: torch.Tensor, char_outs, masks: torch.Tensor) -> torch.Tensor:
    """scene_out [..., N, C]; char_outs: K × [..., N, C] (list or stacked tensor); masks [K, ..., N]
    (0/1, disjoint). Leading dims (e.g. panels) broadcast, so a whole batch blends in one go."""
    if isinstance(char_outs, (list, tuple)):
        if not char_outs:
            return scene_out
        char_outs = torch.stack(char_outs)
    m = masks.to(scene_out.dtype).unsqueeze(-1)  # [K, ..., N, 1]
    inside = (m * char_outs).sum(0)
    return inside + (1 - m.sum(0)) * scene_out
