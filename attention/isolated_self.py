"""Isolated self-attention (OIA §III-C): each character's region sees only its own references.

Pure torch (no ComfyUI import). For one panel, keys are [own image tokens ; references of
character 1 ; references of character 2 ; ...]. An *additive float* mask (never bool: ComfyUI's
CPU backends mis-read bool masks) gives

* own-image columns: 0 for every query row (so no row is ever fully masked);
* character c's reference columns: log(1 + γ·â_j) for query rows inside c's region, a large
  negative (exp underflows to exactly 0) for every other row: a token of character A never
  attends to character B's references, background tokens attend to their own image only.

Re-weighting decision (the paper's formula is not public): an additive logit bias
b_j = log(1 + γ·â_j), i.e. the attention weight of reference token j is multiplied by
(1 + γ·â_j) before renormalisation, where â_j is the min-max normalised cross-attention
activation of the reference token for its character (references from an identity bank carry
â = 1, a constant amplification). γ = 0 disables re-weighting (bias 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blocked_value(dtype: torch.dtype) -> float:
    """A finite, very negative logit bias: exp() of it underflows to 0 in any precision."""
    return torch.finfo(dtype).min / 2 if dtype.is_floating_point else -1e30


def isolation_bias(
    region: torch.Tensor,
    ref_owner: torch.Tensor,
    own_cols: int,
    activation: torch.Tensor | None = None,
    gamma: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive mask [N, own_cols + R].

    region: [K, N] bool, query token n lies in character k's region (disjoint over k).
    ref_owner: [R] long, the character each reference token belongs to.
    activation: [R] in [0, 1] (â_j) for re-weighting; None means 1.
    """
    N = region.shape[1]
    R = ref_owner.numel()
    bias = torch.zeros(N, own_cols + R, dtype=dtype, device=region.device)
    if R == 0:
        return bias
    allowed = region[ref_owner.to(region.device)].transpose(0, 1)  # [N, R]
    act = torch.ones(R, device=region.device) if activation is None else activation.to(region.device).float()
    boost = torch.log1p(gamma * act.clamp(min=0)) if gamma > 0 else torch.zeros_like(act)
    ref = torch.where(
        allowed,
        boost.to(dtype).expand(N, R),
        torch.tensor(blocked_value(dtype), dtype=dtype, device=region.device),
    )
    bias[:, own_cols:] = ref
    return bias


def sdpa_attention(q, k, v, heads, mask=None, **_):
    """Reference attention with ComfyUI's calling convention: [b, n, h·d] in and out."""
    b, n, hd = q.shape
    d = hd // heads
    qh, kh, vh = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, hd)


def isolated_self_attention(
    q,
    k,
    v,
    refs_k,
    refs_v,
    ref_owner,
    region,
    heads,
    attn_fn=sdpa_attention,
    activation=None,
    gamma: float = 0.0,
    **attn_kwargs,
):
    """Isolated self-attention of one panel: q [1, N, C]; k, v [1, M, C] (own image, M >= N
    when other patches appended tokens); refs_k, refs_v [R, C]; region [K, N] bool."""
    if refs_k is None or refs_k.shape[0] == 0:
        return attn_fn(q, k, v, heads, **attn_kwargs)
    kk = torch.cat([k, refs_k.to(k.dtype)[None]], dim=1)
    vv = torch.cat([v, refs_v.to(v.dtype)[None]], dim=1)
    bias = isolation_bias(region, ref_owner, k.shape[1], activation, gamma, dtype=q.dtype)
    return attn_fn(q, kk, vv, heads, mask=bias[None], **attn_kwargs)
