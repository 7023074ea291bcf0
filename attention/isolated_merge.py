"""The isolated branch's merge F = λ·F_iso + (1 − λ)·F_orig (λ = 1.1 in the paper).

Pure torch (no ComfyUI import).

Decisions:
* **Where**: the up-sampling half of the UNet, i.e. every transformer of ComfyUI's
  `("output", i)` blocks (SDXL output 0-5 = the paper's up-sampling blocks; SD1.5 output 3-11,
  the equivalent up blocks). Down and middle blocks are never touched.
* **Granularity**: merged per attention sub-layer (attn1 and attn2 outputs) instead of running
  the whole transformer block twice. `to_out` is affine, so merging before it equals merging
  the sub-layer outputs; the cost is the extra attention calls only (no second FF/norm pass).
* λ > 1 extrapolates away from the original branch; λ = 0 skips the branch entirely (the
  patch is not installed, outputs are bit-identical to the unpatched model).
"""

from __future__ import annotations

import torch

DEFAULT_LAMBDA = 1.1


def merge(iso: torch.Tensor, orig: torch.Tensor, lam: float) -> torch.Tensor:
    if lam == 1.0:
        return iso
    return lam * iso + (1.0 - lam) * orig


def is_isolation_block(block) -> bool:
    """True for the up-sampling blocks the isolated branch runs in."""
    return block is not None and block[0] == "output"
