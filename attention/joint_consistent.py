"""Consistent self-attention inside a DiT's joint (text + image) attention, by gathering.

A joint attention call of a DiT sees, per story panel (batch row), one sequence
[text | image | tail] (tail: reference-latent or padding tokens some families append).
Here each panel's queries attend to its own whole sequence plus the sampled *image* tokens of
the other panels it references; text (and tail) tokens are never shared. The extra keys and
values are gathered into one [R, H, L + M*k, D] tensor per group of rows with the same key
layout and handed to the host's attention kernel: cost grows with the keys attended, never with
a (B*L) x (B*L) mask.

Positions. RoPE families give q and k their position by a rotation of each channel pair, and
rotations of one pair compose additively: R(p + d) k = R(d) R(p) k. A borrowed key that
already carries its own panel's position p can therefore be moved to p + d after the fact by
the rotation R(d) alone, without re-running the block. `slot_rotations[m]` is R(d_m) for the
m-th referenced panel of a row (the glue builds it with the model's own RoPE embedder):
* "canvas": d_m = (0, 0, (m+1)*W): the references sit to the right of the panel, as in one
  wide multi-panel canvas (positions the base model was trained on, no two tokens share one);
* "index": d_m on the index axis, as core's reference latents (Kontext, Flux.2, Qwen edit);
* "same": no rotation: borrowed keys keep the same grid positions as the panel's own
  (the position conflict reported for shared attention on DiTs).
Families with absolute position embeddings added at the input (SD3) carry position in the
features; they only have "same".

The rotation convention is the one of the hosts' RoPE (pairs (x0, x1) of consecutive
channels, freqs [..., D/2, 2, 2], out_r = f[r,0]*x0 + f[r,1]*x1). Pure torch, no ComfyUI import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .consistent import key_layouts, placed

# attn_fn(q, k, v, mask) on [R, H, L, D] tensors -> attention output with batch first
JointAttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

POSITION_MODES = ("canvas", "index", "same")


@dataclass(frozen=True)
class JointLayout:
    """Where the image tokens of one joint sequence are: [img_start, img_start + img_len)."""

    img_start: int
    img_len: int
    grid: tuple[int, int]  # (h, w) tokens of the image part, row-major

    def __post_init__(self):
        if self.img_start < 0 or self.img_len <= 0 or self.grid[0] * self.grid[1] != self.img_len:
            raise ValueError(f"bad joint layout {self}")


def rotate_pairs(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Apply RoPE rotation matrices freqs [..., D/2, 2, 2] to x [..., D] (pairs of channels)."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def rope_rotation(position: Sequence[float], axes_dim: Sequence[int], theta: float) -> torch.Tensor:
    """The host RoPE's rotation matrices for one position vector: [sum(axes_dim)/2, 2, 2] (float32).

    Per axis a, channel pair r rotates by position[a] * theta^(-2r/axes_dim[a]).
    """
    blocks = []
    for pos, dim in zip(position, axes_dim, strict=True):
        scale = torch.arange(0, dim, 2, dtype=torch.float64) / dim
        angle = float(pos) / (float(theta) ** scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        blocks.append(torch.stack([cos, -sin, sin, cos], -1).view(-1, 2, 2))
    return torch.cat(blocks, 0).to(torch.float32)


def slot_offsets(
    mode: str, slots: int, grid: tuple[int, int], axes: int, index_scale: float = 1.0
) -> list[tuple]:
    """Position offset (one value per RoPE axis: index, h, w[, ...]) of the m-th referenced panel."""
    if mode not in POSITION_MODES:
        raise ValueError(f"position mode must be one of {POSITION_MODES}, got {mode!r}")
    out = []
    for m in range(slots):
        d = [0.0] * axes
        if mode == "canvas":
            d[2] = float((m + 1) * grid[1])
        elif mode == "index":
            d[0] = float((m + 1) * index_scale)
        out.append(tuple(d))
    return out


def extend_mask(
    mask: torch.Tensor | None, rows: Sequence[int], batch: int, extra: int
) -> torch.Tensor | None:
    """A joint attention mask [..., Lq, Lk] for the selected rows with `extra` more keys allowed."""
    if mask is None:
        return None
    if mask.ndim >= 3 and mask.shape[0] == batch and batch > 1:
        mask = mask[list(rows)]
    if extra == 0:
        return mask
    pad_shape = (*mask.shape[:-1], extra)
    pad = (
        torch.ones(pad_shape, dtype=mask.dtype, device=mask.device)
        if mask.dtype == torch.bool
        else torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device)
    )
    return torch.cat([mask, pad], -1)


def joint_consistent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: JointLayout,
    indices: torch.Tensor,
    refs: Sequence[Sequence[int]],
    attn_fn: JointAttnFn,
    slot_rotations: Sequence[torch.Tensor | None] | None = None,
    row_extra: Sequence | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Joint attention of B panels where each also sees the sampled image tokens of its refs.

    q, k, v [B, H, L, D] (L = the joint sequence). indices [B, kk]: image-token indices
    (0..img_len-1) each panel shares; refs[i]: rows whose shared tokens row i sees, the m-th
    of them rotated by slot_rotations[m] (None = unrotated). row_extra[i]: None or
    (k_extra [H, E, D], v_extra [H, E, D], tag), e.g. identity-bank tokens, rows with the
    same tag sharing them. Returns attn_fn's output rows in batch order.
    """
    b = q.shape[0]
    kk = indices.shape[1] if indices.numel() else 0
    extra: list[Any] = list(row_extra) if row_extra is not None else [None] * b
    buckets = key_layouts(b, kk, refs, extra)
    if len(buckets) == 1 and (0, None) in buckets:
        return attn_fn(q, k, v, mask)
    shared_k: Any = None
    shared_v: Any = None
    if kk:
        idx = (indices.to(k.device) + layout.img_start).view(b, 1, kk, 1)
        shared_k = torch.gather(k, 2, idx.expand(b, k.shape[1], kk, k.shape[-1]))  # [B, H, kk, D]
        shared_v = torch.gather(v, 2, idx.expand(b, v.shape[1], kk, v.shape[-1]))
    out: Any = None
    length = k.shape[2]
    for (m, tag), rows in buckets.items():
        full = len(rows) == b
        ek: Any = None
        ev: Any = None
        if tag is not None:
            ek, ev, _ = extra[rows[0]]
        total = length + m * kk + (ek.shape[1] if ek is not None else 0)
        # keys/values written into one buffer per group (no list + cat: the peak stays one copy)
        kcat = k.new_empty((len(rows), k.shape[1], total, k.shape[-1]))
        vcat = v.new_empty((len(rows), v.shape[1], total, v.shape[-1]))
        kcat[:, :, :length] = k if full else k[rows]
        vcat[:, :, :length] = v if full else v[rows]
        pos = length
        if m:
            ref_rows = torch.tensor(
                [list(refs[i]) for i in rows], dtype=torch.long, device=k.device
            )  # [R, M]
            for slot in range(m):
                ks = shared_k[ref_rows[:, slot]]
                rot: Any = (
                    slot_rotations[slot]
                    if slot_rotations is not None and slot < len(slot_rotations)
                    else None
                )
                kcat[:, :, pos : pos + kk] = rotate_pairs(ks, rot.to(ks.device)) if rot is not None else ks
                vcat[:, :, pos : pos + kk] = shared_v[ref_rows[:, slot]]
                pos += kk
        if ek is not None:
            kcat[:, :, pos:] = ek.to(device=k.device, dtype=k.dtype).unsqueeze(0)
            vcat[:, :, pos:] = ev.to(device=v.device, dtype=v.dtype).unsqueeze(0)
        qr = q if full else q[rows]
        res = attn_fn(qr, kcat, vcat, extend_mask(mask, rows, b, total - length))
        if len(buckets) == 1:
            return res
        out = placed(out, res, rows, b)
    return out


class JointGather:
    """The joint-attention DiT gather kernel of `consistent_run.ConsistentRun`: q, k, v [B, H, L, D]
    over [text | image | tail] (`layout`), only image tokens shared, the m-th borrowed panel's keys
    moved by `rotations(slots)[m]`; `kernel(q, k, v, mask)` is the attention as the block made it.

    Bank tokens are the keys and values as the attention sees them, one [N, 2*H*D] row a token
    (`take`); a read appends each panel's characters' tokens to its keys and values, character n
    of a panel at position slot n, as borrowed panels are (`bank_extra`)."""

    def __init__(self, layout: JointLayout, kernel: JointAttnFn, rotations, mask: torch.Tensor | None = None):
        self.layout, self.kernel, self.rotations, self.mask = layout, kernel, rotations, mask

    def plain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.kernel(q, k, v, self.mask)

    def share(self, q, k, v, plan, indices, refs, row_extra) -> torch.Tensor:
        slots = max((len(r) for r in plan.refs), default=0)
        rots = self.rotations(slots) if slots and plan.indices is not None else None
        return joint_consistent_attention(
            q, k, v, self.layout, indices, refs, self.kernel, rots, row_extra, self.mask
        )

    def take(self, k: torch.Tensor, v: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """One row's keys and values at some image-token positions as [n, 2*H*D] (a write's record)."""

        def rows(row: int, positions: torch.Tensor) -> torch.Tensor:
            idx = positions.to(k.device) + self.layout.img_start
            return torch.cat([_flat(k[row][:, idx]), _flat(v[row][:, idx])], -1)

        return rows

    def bank_extra(self, run, plan, q, k, v) -> tuple:
        heads, d = q.shape[1], q.shape[-1]
        labels, out, found, cache = run.labels(plan.images), [], False, {}
        for half in plan.chunks:
            for i in range(plan.images):
                names = tuple(labels[i])
                key = (int(half), names)
                if key not in cache:
                    cache[key] = self._bank_keys(run, plan, names, int(half), heads, d, q)
                entry = cache[key]
                out.append(None if entry is None else (*entry, key))
                found = found or entry is not None
        return (out if found else None), k, v

    def _bank_keys(self, run, plan, names, half, heads, d, q):
        rots = self.rotations(len(names)) if names else []
        ks, vs = [], []
        for name, toks in run.bank_tokens(plan, names, half, 2 * heads * d):
            toks = toks.to(device=q.device, dtype=q.dtype)
            kb = toks[:, : heads * d].reshape(-1, heads, d).transpose(0, 1)  # [H, n, D]
            vb = toks[:, heads * d :].reshape(-1, heads, d).transpose(0, 1)
            rot = rots[names.index(name)] if rots else None
            ks.append(rotate_pairs(kb, rot.to(kb.device)) if rot is not None else kb)
            vs.append(vb)
        return (torch.cat(ks, 1), torch.cat(vs, 1)) if ks else None


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[H, n, D] -> [n, H*D]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)
