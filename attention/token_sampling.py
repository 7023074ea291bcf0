"""Seeded per-step choices for consistent self-attention: reference tokens, layer gates, schedules.

Everything here is a pure function of (seed, step sigma, shape, layer): no call counting, so
both guidance halves, split or batched CFG, and samplers that evaluate the model several times
a step all see the same draw, and a rerun (or a run after an interrupted one) repeats it.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch


def _mix(*parts) -> int:
    """A 63-bit integer derived from the parts (floats by their exact bits), stable across runs."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, float):
            h.update(b"f" + struct.pack("<d", p))
        else:
            h.update(b"s" + repr(p).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def step_seed(seed: int, sigma: float, num_tokens: int) -> int:
    """Seed of the reference-token draw for one step (sigma) at one resolution (num_tokens)."""
    return _mix(int(seed), float(sigma), int(num_tokens))


def tokens_to_keep(num_tokens: int, keep_rate: float) -> int:
    """How many of an image's tokens are shared with the others: round(keep_rate * N), within 0..N."""
    if not 0.0 <= keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be within 0..1, got {keep_rate}")
    return max(0, min(num_tokens, int(round(keep_rate * num_tokens))))


def sample_token_indices(
    num_images: int, num_tokens: int, keep_rate: float, seed: int, sigma: float
) -> torch.Tensor:
    """Per image, a uniform random subset of round(keep_rate*N) token indices, sorted: LongTensor [B, k].

    Drawn on the CPU from a generator seeded by (seed, sigma, N), so every layer of a step at
    this resolution and both guidance halves get the same subset.
    """
    k = tokens_to_keep(num_tokens, keep_rate)
    if k == 0 or num_images == 0:
        return torch.zeros(num_images, 0, dtype=torch.long)
    if k == num_tokens:
        return torch.arange(num_tokens).expand(num_images, -1).clone()
    gen = torch.Generator().manual_seed(step_seed(seed, sigma, num_tokens))
    order = torch.rand(num_images, num_tokens, generator=gen).argsort(dim=1)
    return order[:, :k].sort(dim=1).values


def gate_draw(seed: int, sigma: float, layer: tuple) -> float:
    """A uniform number in [0, 1) for (seed, step, layer): the layer applies CSA when it is below p."""
    return _mix(int(seed), float(sigma), "gate", tuple(layer)) / float(1 << 63)


@dataclass(frozen=True)
class ProbabilitySchedule:
    """Per-layer apply probability over the run: [(from_fraction, p), ...], sorted by fraction."""

    points: tuple[tuple[float, float], ...]

    def at(self, progress: float) -> float:
        p = self.points[0][1]
        for start, value in self.points:
            if progress + 1e-9 >= start:
                p = value
        return p


def parse_probability_schedule(text: str) -> ProbabilitySchedule:
    """Parse "0.7, 0.9@40": p=0.7 from the start, 0.9 from 40 % of the steps on.

    Each comma-separated entry is `p` or `p@percent`; the first entry without `@` starts at 0 %.
    Raises ValueError with the offending entry.
    """
    points: list[tuple[float, float]] = []
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    if not entries:
        raise ValueError("the schedule is empty; write e.g. '0.7, 0.9@40' or '1'")
    for i, entry in enumerate(entries):
        value, _, at = entry.partition("@")
        try:
            p = float(value)
            start = float(at.strip().rstrip("%")) / 100.0 if at else (0.0 if i == 0 else None)
        except ValueError:
            raise ValueError(f"'{entry}' is not 'p' or 'p@percent' (e.g. 0.9@40)") from None
        if start is None:
            raise ValueError(f"'{entry}' needs '@percent' (only the first entry may omit it)")
        if not (0.0 <= p <= 1.0 and math.isfinite(p)):
            raise ValueError(f"'{entry}': probability {p} is outside 0..1")
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"'{entry}': percent {start * 100:g} is outside 0..100")
        points.append((start, p))
    points.sort()
    if points[0][0] > 0.0:
        points.insert(0, (0.0, points[0][1]))
    return ProbabilitySchedule(tuple(points))
