"""Consistent self-attention by gathering (pure torch).

Each story image's queries attend to its own tokens plus a sampled subset of the tokens of the
other story images (its window), and optionally to bank tokens. The keys and values of every
image are built by *gathering* those tokens into one [B, N + extra, C] tensor and handed to an
SDPA-class kernel: memory and time grow with the tokens actually attended, never with a dense
(B*N) x (B*N) mask (that naive masked formulation is tests/reference_attention.py, the reference
of the tests and the benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """torch scaled_dot_product_attention on [B, N, heads*d] tensors -> [B, Nq, heads*d]."""
    b, nq, c = q.shape
    d = c // heads
    qh = q.view(b, nq, heads, d).transpose(1, 2)
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, nq, c)


def reference_table(
    num_images: int, window: int = 0, groups: Sequence | None = None
) -> list[tuple[int, ...]]:
    """For each image, the other images whose sampled tokens it attends to (sorted).

    window 0 = every other image; window W = a run of W consecutive story images around the
    image (itself included), i.e. its W-1 nearest neighbours (ties to the earlier image); at
    the ends of the story the window slides inwards, so every image keeps W-1 references and
    its cost stays flat however long the story is. groups: optional label per image; only images
    with the same label are candidates
    (None labels take part in nothing).
    """
    table: list[tuple[int, ...]] = []
    for i in range(num_images):
        if groups is not None and groups[i] is None:
            table.append(())
            continue
        cand = [j for j in range(num_images) if j != i and (groups is None or groups[j] == groups[i])]
        if window and len(cand) > window - 1:
            cand = sorted(cand, key=lambda j: (abs(j - i), j))[: max(0, window - 1)]
        table.append(tuple(sorted(cand)))
    return table


def story_reference_table(tags: Sequence[Sequence[str]], window: int = 0) -> list[tuple[int, ...]]:
    """Story-aware references: image i takes the shared tokens of image j only when every
    character j shows is one that i shows too.

    A panel of Bob alone takes from Bob's other solo panels (never from a panel where Alice
    appears beside him, whose tokens are half Alice); a panel of Bob and Alice takes from Bob's,
    Alice's and other Bob-and-Alice panels; a panel without characters (``[NC]`` or untagged)
    neither gives nor takes. window W keeps the W-1 nearest of those candidates (ties to the
    earlier image), as in `reference_table`.
    """
    shows = [frozenset(t) for t in tags]
    table = []
    for i, mine in enumerate(shows):
        cand = [j for j, theirs in enumerate(shows) if j != i and mine and theirs and theirs <= mine]
        if window and len(cand) > window - 1:
            cand = sorted(cand, key=lambda j: (abs(j - i), j))[: max(0, window - 1)]
        table.append(tuple(sorted(cand)))
    return table


def downscale_level(latent_hw: tuple[int, int], hw: tuple[int, int], max_level: int = 6) -> int:
    """The resolution level of an attention layer whose activations are hw for a latent_hw latent.

    Exact when hw is what `level` stride-2 downsamplings (ceil rounding, as the UNet does) give;
    otherwise the nearest level in log token count: Kohya Deep Shrink by a factor that is not a
    power of two (x1.5: 5x5 instead of 4x4 for a 16x16 latent) runs a block at an in-between
    size, and that block takes the keep-rate of the level nearest to its size, never none.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    target = (int(hw[0]), int(hw[1]))
    sizes = []
    for level in range(max_level + 1):
        if (h, w) == target:
            return level
        sizes.append(h * w)
        h, w = (h + 1) // 2, (w + 1) // 2
    tokens = max(1, target[0] * target[1])
    return min(range(len(sizes)), key=lambda lv: (abs(math.log(sizes[lv] / tokens)), lv))


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x [B, N, C], indices [B, k] -> x[b, indices[b]] as [B, k, C]."""
    idx = indices.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, idx)


def consistent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    indices: torch.Tensor,
    refs: Sequence[Sequence[int]],
    row_extra: Sequence | None = None,
    attn_fn: AttnFn = sdpa,
    index_cache: dict | None = None,
) -> torch.Tensor:
    """Consistent self-attention for one chunk of B story images (one guidance half).

    q [B, N, C]; k, v [B, L, C] with L >= N, their first N tokens the images' own (any further
    tokens, e.g. appended by another patch, stay keys of their row). indices [B, k]: the tokens
    each image shares; refs[i]: the images whose shared tokens image i sees. row_extra[i]:
    None or (key, value, tag) extra tokens [E, C] for row i (bank tokens), rows with the same
    tag sharing them. Rows with the same key layout are batched into one attn_fn call.
    """
    b, n, _ = q.shape
    kk = indices.shape[1] if indices.numel() else 0
    extra: list[Any] = list(row_extra) if row_extra is not None else [None] * b
    if all(not refs[i] or kk == 0 for i in range(b)) and all(e is None for e in extra):
        return attn_fn(q, k, v, heads)
    buckets = key_layouts(b, kk, refs, extra)
    if len(buckets) == 1 and (0, None) in buckets:
        return attn_fn(q, k, v, heads)
    flat_k, flat_v = k.reshape(-1, k.shape[-1]), v.reshape(-1, v.shape[-1])
    out: Any = None
    for (m, tag), rows in buckets.items():
        row_refs = [tuple(refs[i]) for i in rows] if m else []
        key = (k.shape[1], n, id(indices), tuple(rows), tuple(row_refs), k.device)
        index = index_cache.get(key) if index_cache is not None else None
        if index is None:
            index = gather_index(k.shape[1], n, indices, row_refs, rows).to(k.device)
            if index_cache is not None:
                index_cache[key] = index
        keys = flat_k.index_select(0, index.view(-1)).view(len(rows), -1, k.shape[-1])
        values = flat_v.index_select(0, index.view(-1)).view(len(rows), -1, v.shape[-1])
        if tag is not None:
            ek, ev, _ = extra[rows[0]]
            keys = torch.cat([keys, ek.to(k.dtype).unsqueeze(0).expand(len(rows), -1, -1)], 1)
            values = torch.cat([values, ev.to(v.dtype).unsqueeze(0).expand(len(rows), -1, -1)], 1)
        res = attn_fn(q[rows] if len(rows) < b else q, keys, values, heads)
        if len(buckets) == 1:
            return res
        out = placed(out, res, rows, b)
    return out


def key_layouts(b: int, kk: int, refs: Sequence[Sequence[int]], extra: Sequence) -> dict:
    """The rows of a call grouped by key layout, (panels referenced, bank tag) -> rows: each group
    is one attention call (every model family's gather)."""
    buckets: dict = {}
    for i in range(b):
        m = len(refs[i]) if kk else 0
        tag = None if extra[i] is None else extra[i][2]
        buckets.setdefault((m, tag), []).append(i)
    return buckets


def placed(out: torch.Tensor | None, res: torch.Tensor, rows: list, b: int) -> torch.Tensor:
    """`out` (made on first use, [b, ...] like `res`) with one group's result in its rows."""
    if out is None:
        out = res.new_empty((b,) + tuple(res.shape[1:]))
    out[rows] = res
    return out


def gather_index(
    length: int, n: int, indices: torch.Tensor, refs: Sequence[Sequence[int]], rows: Sequence[int]
):
    """Flat row indices into k.reshape(B*length, C) for the given rows: each row's own `length`
    tokens, then the shared tokens of each of its refs. One index_select builds all keys."""
    own = torch.tensor(list(rows), dtype=torch.long).unsqueeze(1) * length + torch.arange(length)
    if not refs or not len(refs[0]) or not indices.numel():
        return own
    other = torch.tensor([list(r) for r in refs], dtype=torch.long)  # [R, M]
    shared = other.unsqueeze(-1) * length + indices.cpu()[other]  # [R, M, k]
    return torch.cat([own, shared.flatten(1)], 1)


class TokenGather:
    """The UNet gather kernel of `consistent_run.ConsistentRun`: q, k, v [B, N (+ appended), C] with
    the heads folded, every token an image token; `kernel(q, k, v, heads)` is the layer's attention.

    Bank tokens are a self-attention layer's *input*: a write records the attn1 input (`take`), a
    read appends the characters' tokens to the layer's context (`append_bank`, from the attn1
    patch) so the layer itself projects them, and `bank_extra` lifts the projected part back out
    of k and v as each row's extra keys."""

    def __init__(self, heads: int, kernel: AttnFn, index_cache: dict | None = None):
        self.heads, self.kernel, self.index_cache = heads, kernel, index_cache

    def plain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.kernel(q, k, v, self.heads)

    def share(self, q, k, v, plan, indices, refs, row_extra) -> torch.Tensor:
        return consistent_attention(
            q, k, v, self.heads, indices, refs, row_extra, self.kernel, index_cache=self.index_cache
        )

    @staticmethod
    def take(n: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """The attn1 input's tokens at some positions of one row (a write run's record)."""
        return lambda row, positions: n[row, positions.to(n.device)]

    @staticmethod
    def append_bank(run, plan, n, context, value) -> tuple:
        """(n, context, value) of the attn1 patch with the bank tokens of each row's characters
        appended to the context (a read run); notes where they are in `plan.bank`."""
        if context is not value and not torch.equal(context, value):
            return n, context, value  # another patch set distinct values: leave the bank out
        labels = run.labels(plan.images)
        names = sorted({c for row in labels for c in row})
        if not names:
            return n, context, value
        segments: dict = {}
        per_half: dict[Any, Any] = {}
        for half in set(plan.chunks):
            parts, pos = [], 0
            for name, toks in run.bank_tokens(plan, names, half, n.shape[-1]):
                parts.append(toks)
                segments[name] = (pos, pos + toks.shape[0])
                pos += toks.shape[0]
            per_half[half] = torch.cat(parts, 0) if parts else None
        lengths = {t.shape[0] if t is not None else 0 for t in per_half.values()}
        if len(lengths) != 1 or 0 in lengths:
            return n, context, value
        rows = torch.cat(
            [
                per_half[h].to(device=n.device, dtype=n.dtype).unsqueeze(0).expand(plan.images, -1, -1)
                for h in plan.chunks
            ],
            0,
        )
        plan.bank = (context.shape[1], rows.shape[1], segments)
        ctx = torch.cat([context, rows], 1)
        return n, ctx, ctx

    def bank_extra(self, run, plan, q, k, v) -> tuple:
        """(per row: (keys, values, tag) of its characters' bank tokens or None, k, v without them)."""
        if not plan.bank:
            return None, k, v
        lo, length, segments = plan.bank
        hi = lo + length
        bank_k, bank_v = k[:, lo:hi], v[:, lo:hi]
        k = k[:, :lo] if hi == k.shape[1] else torch.cat([k[:, :lo], k[:, hi:]], 1)
        v = v[:, :lo] if hi == v.shape[1] else torch.cat([v[:, :lo], v[:, hi:]], 1)
        b, labels = plan.images, run.labels(plan.images)
        extra: list[Any] = []
        for c in range(len(plan.chunks)):
            for i in range(b):
                spans = [segments[n] for n in labels[i] if n in segments]
                if not spans:
                    extra.append(None)
                    continue
                ks = torch.cat([bank_k[c * b][a:e] for a, e in spans], 0)
                vs = torch.cat([bank_v[c * b][a:e] for a, e in spans], 0)
                extra.append((ks, vs, (c, tuple(labels[i]))))
        return extra, k, v
