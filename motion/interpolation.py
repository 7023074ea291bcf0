"""Interpolation of CLIP image embeddings over video frames: linear and spherical, key-frame chains.

Every function takes embeddings as [..., K, D] (K key frames of dimension D) and returns
[..., L, D] together with a boolean key-frame mask [L]. Key frames are copied bit-exactly into
their slots, and a segment whose two ends are equal is filled with exact copies of that end, so
"start == end" gives the same conditioning as a still image.
"""

from __future__ import annotations

import torch

MODES = ("linear", "spherical")


class InterpolationError(ValueError):
    """Bad arguments to an interpolation (frame counts, shapes, mode)."""


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InterpolationError(f"unknown interpolation mode {mode!r}; use one of {', '.join(MODES)}")


def frame_times(frames: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Times 0 .. 1 of `frames` evenly spaced frames, both ends included."""
    if frames < 2:
        raise InterpolationError(f"a transition needs at least 2 frames (start and end), got {frames}")
    return torch.linspace(0.0, 1.0, frames, dtype=dtype, device=device)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation a..b at times t: a [..., D], b [..., D], t [L] -> [..., L, D]."""
    t = t.to(a.dtype).view(*([1] * (a.dim() - 1)), -1, 1)
    return a.unsqueeze(-2) * (1.0 - t) + b.unsqueeze(-2) * t


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation: the direction moves along the great circle, the norm linearly.

    Nearly parallel directions fall back to a normalised linear blend (the great circle is
    undefined there and both agree to first order).
    """
    na = a.norm(dim=-1, keepdim=True)
    nb = b.norm(dim=-1, keepdim=True)
    ua = a / na.clamp_min(eps)
    ub = b / nb.clamp_min(eps)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos).unsqueeze(-2)  # [..., 1, 1]
    sin = torch.sin(omega)
    tt = t.to(a.dtype).view(*([1] * (a.dim() - 1)), -1, 1)
    safe = sin.abs() > eps
    sin_safe = torch.where(safe, sin, torch.ones_like(sin))
    wa = torch.where(safe, torch.sin((1.0 - tt) * omega) / sin_safe, 1.0 - tt)
    wb = torch.where(safe, torch.sin(tt * omega) / sin_safe, tt)
    direction = ua.unsqueeze(-2) * wa + ub.unsqueeze(-2) * wb
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(eps)
    norm = na.unsqueeze(-2) * (1.0 - tt) + nb.unsqueeze(-2) * tt
    return direction * norm


def interpolate(a: torch.Tensor, b: torch.Tensor, frames: int, mode: str = "linear") -> torch.Tensor:
    """`frames` embeddings from a to b (both included): [..., D] x2 -> [..., frames, D].

    The ends are exact copies of a and b; where a == b exactly every frame is a copy of a.
    """
    _check_mode(mode)
    if a.shape != b.shape:
        raise InterpolationError(
            f"start and end embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    t = frame_times(frames, dtype=a.dtype if a.is_floating_point() else torch.float32, device=a.device)
    out = lerp(a, b, t) if mode == "linear" else slerp(a, b, t)
    out[..., 0, :] = a
    out[..., -1, :] = b
    same = (a == b).all(dim=-1, keepdim=True).unsqueeze(-2)  # [..., 1, 1]
    return torch.where(same, a.unsqueeze(-2).expand_as(out), out)


def chain_positions(keys: int, frames_per_transition: int) -> list[int]:
    """Frame index of each key frame in a chained clip: consecutive transitions share their join frame."""
    if keys < 2:
        raise InterpolationError(f"a key-frame chain needs at least 2 key frames, got {keys}")
    if frames_per_transition < 2:
        raise InterpolationError(
            f"a transition needs at least 2 frames (start and end), got {frames_per_transition}"
        )
    return [k * (frames_per_transition - 1) for k in range(keys)]


def chain_length(keys: int, frames_per_transition: int) -> int:
    """Total frames of a chain of keys-1 transitions of `frames_per_transition` frames each."""
    return chain_positions(keys, frames_per_transition)[-1] + 1


def key_mask(positions: list[int], length: int, device=None) -> torch.Tensor:
    """Boolean [length] mask, True at key-frame slots."""
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    mask[list(positions)] = True
    return mask


def interpolate_keyframes(
    keys: torch.Tensor, positions: list[int], mode: str = "linear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate between key frames placed at increasing frame positions.

    keys [..., K, D] with K == len(positions); positions start at 0 and increase strictly.
    Returns (sequence [..., positions[-1] + 1, D], key mask [positions[-1] + 1]).
    """
    _check_mode(mode)
    positions = [int(p) for p in positions]
    if keys.dim() < 2 or keys.shape[-2] != len(positions):
        raise InterpolationError(
            f"{len(positions)} key positions for key embeddings of shape {tuple(keys.shape)}"
        )
    if len(positions) < 2:
        raise InterpolationError("a key-frame chain needs at least 2 key frames")
    if positions[0] != 0 or any(q <= p for p, q in zip(positions, positions[1:], strict=False)):
        raise InterpolationError(f"key positions must start at 0 and increase strictly, got {positions}")
    pieces = []
    for i, (p, q) in enumerate(zip(positions, positions[1:], strict=False)):
        seg = interpolate(keys[..., i, :], keys[..., i + 1, :], q - p + 1, mode)
        pieces.append(seg if i == len(positions) - 2 else seg[..., :-1, :])
    seq = torch.cat(pieces, dim=-2)
    return seq, key_mask(positions, seq.shape[-2], device=keys.device)
