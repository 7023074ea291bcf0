"""Per-frame embeddings of a chained transition clip: N panels -> N-1 transitions sharing join frames.

Transition i runs from panel i (frame i*(L-1)) to panel i+1 (frame (i+1)*(L-1)); the join
frame belongs to both and is exactly that panel's embedding, so consecutive transitions meet
without a jump. With a predictor each transition is refined on its own window of L frames
(the task it was trained on: inner frames from the first and last).
"""

from __future__ import annotations

import torch

from .interpolation import chain_length, chain_positions, interpolate


def chain_frame_embeddings(
    keys: torch.Tensor, frames_per_transition: int, mode: str = "linear", predictor=None
) -> torch.Tensor:
    """keys [N, D] (one embedding per panel) -> per-frame embeddings [(N-1)*(L-1)+1, D]."""
    if keys.dim() != 2:
        raise ValueError(f"panel embeddings must be [panels, dim], got {tuple(keys.shape)}")
    chain_positions(keys.shape[0], frames_per_transition)
    pieces = []
    for i in range(keys.shape[0] - 1):
        seg = interpolate(keys[i], keys[i + 1], frames_per_transition, mode)
        if predictor is not None:
            mask = torch.zeros(frames_per_transition, dtype=torch.bool)
            mask[0] = mask[-1] = True
            with torch.no_grad():
                dev = next(predictor.parameters()).device
                seg = predictor(seg.unsqueeze(0).to(dev), mask.to(dev))[0].to(keys.device, keys.dtype)
        pieces.append(seg if i == keys.shape[0] - 2 else seg[:-1])
    return torch.cat(pieces, dim=0)  # positions[-1] + 1 frames


def start_panel_of_frame(panels: int, frames_per_transition: int) -> list[int]:
    """For every frame of the chain, the panel its transition starts from (its concat image)."""
    total = chain_length(panels, frames_per_transition)
    return [min(f // (frames_per_transition - 1), panels - 2) for f in range(total)]
