"""Reference formulations for tests and benchmarks (never used by the pack at run time)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def dense_mask(
    b: int, n: int, indices: torch.Tensor, refs: Sequence[Sequence[int]], dtype, device
) -> torch.Tensor:
    """The naive formulation's additive (B*N)x(B*N) mask: image i's queries see all its own tokens
    and the shared tokens of its refs."""
    total = b * n
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    shared = torch.zeros(b, n, dtype=torch.bool, device=device)
    if indices.numel():
        shared.scatter_(1, indices.to(device), True)
    for i in range(b):
        rows = slice(i * n, (i + 1) * n)
        allowed[rows, i * n : (i + 1) * n] = True
        for j in refs[i]:
            allowed[rows, j * n : (j + 1) * n] = shared[j]
    mask = torch.zeros(total, total, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def dense_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    indices: torch.Tensor,
    refs: Sequence[Sequence[int]],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The naive formulation: all B*N tokens as one sequence under a dense (B*N)x(B*N) mask.

    Reference only (tests, benchmark): its memory grows with the story length squared.
    """
    b, n, c = q.shape
    total = b * n
    if mask is None:
        mask = dense_mask(b, n, indices, refs, q.dtype, q.device)
    d = c // heads
    qh = q.reshape(1, total, heads, d).transpose(1, 2)
    kh = k[:, :n].reshape(1, total, heads, d).transpose(1, 2)
    vh = v[:, :n].reshape(1, total, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, c)


def attention_weights(q, k, heads, mask=None) -> torch.Tensor:
    """Explicit softmax weights [b, heads, n, T] of an attention call (for measurements and tests)."""
    b, n, hd = q.shape
    d = hd // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2).float()
    kh = k.reshape(k.shape[0], -1, heads, d).transpose(1, 2).float()
    s = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        s = s + (mask.unsqueeze(1) if mask.ndim == 3 else mask).float()
    return s.softmax(-1)
