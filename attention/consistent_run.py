"""One run of Consistent Self-Attention: settings, the per-block-call plan, the run's caches.

Pure torch (no ComfyUI import); the ComfyUI glue (nodes/patch_consistent.py) calls
`ConsistentRun.attn1_patch` from an attn1 patch and `ConsistentRun.attention` from an attn1
replace with the attention kernel injected (the replace it wraps, or ComfyUI's attention).

* attn1 patch (pre-projection tokens after norm1): a bank *write* run records the shared tokens
  of each identity image; a *read* run appends the bank tokens of the batch's characters to the
  context, so the layer itself projects them;
* attn1 replace: gathers the already-projected shared keys/values of the other images of the
  same guidance chunk (and the row's bank tokens) and runs one SDPA-class call per key layout.

Steps are recognised by sigma (extra["sigmas"] within extra["sample_sigmas"]), never counted;
the step window is a `steps.StepWindow` of fractions 0..1 of the model's noise schedule (a
`steps.NoiseClock` given at reset), so split runs equal the single run; see steps.py for the
second-order sampler rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .consistent import consistent_attention, downscale_level, reference_table, story_reference_table
from .identity_bank import IdentityBank, width_mismatch
from .steps import NoiseClock, StepWindow, step_index, step_progress, step_sigma, warmup_step
from .token_sampling import ProbabilitySchedule, gate_draw, sample_token_indices

PLAN_KEY = "storydiff_consistent_plan"  # per-block-call note from the attn1 patch to the replace
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class ConsistentConfig:
    keep_rates: tuple = (0.5, 0.5, 0.5, 0.5)  # at latent/1, /2, /4, /8 (image 1/8, 1/16, 1/32, 1/64)
    blocks: str = "up"  # "up" (output blocks, as the official code) or "all"
    warmup_steps: int = 1
    steps: StepWindow = StepWindow()
    schedule: ProbabilitySchedule = ProbabilitySchedule(((0.0, 0.7), (0.4, 0.9)))
    window: int = 0
    seed: int = 0
    strength: float = 1.0

    def keep_rate(self, level: int | None) -> float:
        if level is None:
            return 0.0
        return self.keep_rates[min(level, len(self.keep_rates) - 1)]

    def covers(self, block) -> bool:
        return self.blocks == "all" or (block is not None and block[0] == "output")


@dataclass
class Mode:
    kind: str = "plain"  # "plain" | "write" | "read"
    bank: IdentityBank | None = None
    labels: tuple = ()  # write: character per image (None = not an identity image); read: names per image
    node: str = "Consistent Self-Attention"
    # The characters each image shows (a connected STORY): sharing follows the story
    # (`story_reference_table`); None = every image shares with every other (no story).
    tags: tuple | None = None

    def sharing(self, images: int, window: int) -> list:
        """The images each image takes shared tokens from (plain and write runs)."""
        if self.kind == "write":  # identity images share only with the same character's identity images
            tags = (
                self.tags
                if self.tags is not None
                else tuple(() if lab is None else (lab,) for lab in self.labels)
            )
            tags = tags * images if len(tags) == 1 else tags
            return story_reference_table(tags, window)
        if self.tags is not None and len(self.tags) == images:
            return story_reference_table(self.tags, window)
        return reference_table(images, window)


@dataclass
class Plan:
    sigma: float
    layer: tuple
    chunks: list  # cond_or_uncond labels
    images: int
    active: bool
    indices: torch.Tensor | None = None
    refs: list | None = None
    base_len: int = 0  # context length before the bank tokens
    bank_len: int = 0
    segments: dict | None = None  # character -> (start, end) inside the bank part
    step: int = 0  # step index in the sampler's schedule, and the schedule's number of steps
    steps: int = 0
    rate: float = 0.0  # CSA keep-rate at this layer's resolution


@dataclass
class ConsistentRun:
    """Settings + the per-run caches of one patch; `reset()` when sampling starts, `release()` after."""

    config: ConsistentConfig
    mode: Mode = field(default_factory=Mode)

    def __post_init__(self):
        self.reset()

    def reset(self, clock: NoiseClock | None = None) -> None:
        """A new sampling run; `clock` places sigmas in the model's noise schedule (see steps.py)."""
        self.clock = clock
        self.indices: dict = {}  # (step sigma, tokens, images, keep-rate) -> LongTensor [B, k]
        self.gather: dict = {}  # gather indices reused by the layers of one shape
        self.repeated: dict = {}  # indices repeated over the guidance chunks
        self.steps: dict = {}  # sigma -> (step index, progress, step sigma)
        kind, bank = self.mode.kind, self.mode.bank
        self.staging = bank.empty_like() if kind == "write" and bank is not None else None

    def release(self) -> None:
        self.indices, self.gather, self.repeated, self.steps = {}, {}, {}, {}
        self.staging = None
        if self.mode.kind == "read" and self.mode.bank is not None:
            self.mode.bank.release()  # the tokens this run unpacked or read from the bank's file

    def labels(self, images: int) -> tuple:
        labels = self.mode.labels
        return tuple(labels) * images if len(labels) == 1 else tuple(labels)

    # ---- planning (shared by the attn1 patch and the replace of one block call) ----------
    def plan(self, rows: int, tokens: int, extra: dict) -> Plan | None:
        plan = extra.get(PLAN_KEY)
        if plan is not None:
            return plan
        cfg = self.config
        block = extra.get("block")
        shape = extra.get("activations_shape")
        if not cfg.covers(block) or shape is None or extra.get("sigmas") is None:
            return None
        h, w = int(shape[-2]), int(shape[-1])
        if rows != int(shape[0]) or tokens != h * w:
            return None  # an SVD temporal block, or an unknown layout
        chunks = list(extra.get("cond_or_uncond") or [0])
        if rows % len(chunks):
            return None
        images = rows // len(chunks)
        sample_sigmas = extra.get("sample_sigmas")
        sigma_now = float(extra["sigmas"].reshape(-1)[0])
        if sigma_now not in self.steps:
            t, progress = step_progress(sigma_now, sample_sigmas)
            sigma = step_sigma(sigma_now, sample_sigmas)
            if self.clock is not None:
                progress = self.clock.progress(sigma)
            warm = warmup_step(t, cfg.warmup_steps, sample_sigmas, self.clock)
            self.steps[sigma_now] = (warm, progress, sigma)
        warm, progress, sigma = self.steps[sigma_now]
        layer = (block[0], int(block[1]), int(extra.get("block_index", 0)))
        active = (
            cfg.strength > 0
            and not warm
            and cfg.steps.contains(progress)
            and gate_draw(cfg.seed, sigma, layer) < cfg.schedule.at(progress)
        )
        original = extra.get("original_shape")
        level = downscale_level(tuple(original[-2:]), (h, w)) if original is not None else None
        rate = cfg.keep_rate(level)
        total = len(sample_sigmas) - 1 if sample_sigmas is not None else 0
        plan = Plan(
            sigma=sigma,
            layer=layer,
            chunks=chunks,
            images=images,
            active=active,
            step=step_index(sigma_now, sample_sigmas) if self.mode.kind == "write" else 0,
            steps=total,
            rate=rate,
        )
        kind = self.mode.kind
        if rate > 0 and ((active and kind == "plain") or kind == "write"):
            key = (sigma, tokens, images, rate)
            if key not in self.indices:
                if len(self.indices) > 64:  # a new step: earlier draws are done with
                    self.indices, self.gather, self.repeated = {}, {}, {}
                self.indices[key] = sample_token_indices(images, tokens, rate, cfg.seed, sigma)
            plan.indices = self.indices[key]
        plan.refs = self.mode.sharing(images, cfg.window) if kind in ("plain", "write") else [()] * images
        extra[PLAN_KEY] = plan
        return plan

    # ---- attn1 patch: record (write) or append bank tokens (read) ---------------------
    def attn1_patch(self, n, context, value, extra) -> tuple:
        plan = self.plan(n.shape[0], n.shape[1], extra)
        if plan is None:
            return n, context, value
        if self.mode.kind == "write" and plan.indices is not None and self.staging is not None:
            self._record(n, plan)
        if self.mode.kind == "read" and plan.active:
            return self._append_bank(n, context, value, plan)
        return n, context, value

    def _record(self, n: torch.Tensor, plan: Plan) -> None:
        staging = self.staging  # what is stored (steps, token positions, halves) is the bank's choice
        idx = staging.record_positions(
            plan.images,
            n.shape[1],
            plan.rate,
            self.config.seed,
            plan.sigma,
            plan.step,
            plan.steps,
            self.config.warmup_steps,
        )
        if idx is None:
            return
        labels = self.labels(plan.images)
        idx = idx.to(n.device)
        for c, half in enumerate(plan.chunks):
            if not staging.records_half(half):
                continue
            chunk = n[c * plan.images : (c + 1) * plan.images]
            for name in sorted({lab for lab in labels if lab is not None}):
                rows = [i for i, lab in enumerate(labels) if lab == name]
                toks = torch.cat([chunk[i, idx[i]] for i in rows], 0)
                staging.record(name, plan.sigma, plan.layer, toks, half=int(half), images=len(rows))

    def _bank_rows(self, plan: Plan, names: list, half, width: int, segments: dict) -> torch.Tensor | None:
        bank = self.mode.bank
        parts, pos = [], 0
        for name in names:
            toks = bank.tokens(name, plan.sigma, plan.layer, half=int(half) if int(half) in (0, 1) else 0)
            if toks is None:
                toks = bank.tokens(name, plan.sigma, plan.layer, half=0)
            if toks is not None and toks.shape[-1] != width:
                raise width_mismatch(self.mode.node, bank, name, plan.layer, toks.shape[-1], width)
            if toks is None:
                continue
            parts.append(toks)
            segments[name] = (pos, pos + toks.shape[0])
            pos += toks.shape[0]
        return torch.cat(parts, 0) if parts else None

    def _append_bank(self, n, context, value, plan: Plan) -> tuple:
        if context is not value and not torch.equal(context, value):
            return n, context, value  # another patch set distinct values: leave the bank out
        names = sorted({c for row in self.labels(plan.images) for c in row})
        if not names:
            return n, context, value
        segments: dict = {}
        per_half = {
            half: self._bank_rows(plan, names, half, n.shape[-1], segments) for half in set(plan.chunks)
        }
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
        plan.base_len, plan.bank_len, plan.segments = context.shape[1], rows.shape[1], segments
        ctx = torch.cat([context, rows], 1)
        return n, ctx, ctx

    # ---- attn1 replace ------------------------------------------------------------------
    def attention(self, q, k, v, extra: dict, attn: Kernel) -> torch.Tensor:
        """The layer's self-attention with sharing; `attn(q, k, v, heads)` is the kernel."""
        heads = extra["n_heads"]
        plan = self.plan(q.shape[0], q.shape[1], extra)
        if plan is None or not plan.active:
            return attn(q, k, v, heads)
        bank_part = plan.bank_len if plan.segments else 0
        if bank_part:
            lo, hi = plan.base_len, plan.base_len + plan.bank_len
            bank_k, bank_v = k[:, lo:hi], v[:, lo:hi]
            k = k[:, :lo] if hi == k.shape[1] else torch.cat([k[:, :lo], k[:, hi:]], 1)
            v = v[:, :lo] if hi == v.shape[1] else torch.cat([v[:, :lo], v[:, hi:]], 1)
        # all guidance chunks in one call, rows in ComfyUI's order (an earlier replace sees the
        # batch layout it expects); references never cross a chunk
        b, chunks = plan.images, len(plan.chunks)
        refs = [tuple(c * b + j for j in plan.refs[i]) for c in range(chunks) for i in range(b)]
        indices = self._batch_indices(plan, chunks)
        row_extra = None
        if bank_part:
            labels = self.labels(b)
            row_extra = [
                _row_bank(bank_k[c * b], bank_v[c * b], plan, labels[i], c)
                for c in range(chunks)
                for i in range(b)
            ]
        out = consistent_attention(q, k, v, heads, indices, refs, row_extra, attn, index_cache=self.gather)
        s = self.config.strength
        if s < 1.0:
            plain = attn(q, k, v, heads)
            out = plain + (out - plain) * s
        return out

    def _batch_indices(self, plan: Plan, chunks: int) -> torch.Tensor:
        if plan.indices is None:
            return torch.zeros(plan.images * chunks, 0, dtype=torch.long)
        key = (id(plan.indices), chunks)  # plan.indices stays alive in self.indices meanwhile
        if key not in self.repeated:
            self.repeated[key] = plan.indices.repeat(chunks, 1)
        return self.repeated[key]


def _row_bank(bank_k, bank_v, plan: Plan, names, chunk: int) -> tuple | None:
    spans = [plan.segments[n] for n in names if n in plan.segments]
    if not spans:
        return None
    ks = torch.cat([bank_k[a:b] for a, b in spans], 0)
    vs = torch.cat([bank_v[a:b] for a, b in spans], 0)
    return ks, vs, (chunk, tuple(names))
