"""One run of Consistent Self-Attention, for every model family: settings, the per-call plan, caches.

Pure torch (no ComfyUI import). The glue (nodes/patch_consistent.py) describes each
self-attention call it sees as a `Call` (which layer, how many shareable image tokens, the
guidance chunks, the sigma, the layer's keep-rate) and hands `ConsistentRun.attention` a
`Gather`: the family-specific gather kernel, the only part that differs between model families.

* UNets (`consistent.TokenGather`): the layer's tokens are all image tokens, [B, N, C] with the
  heads folded; bank tokens are the layer's *input* (recorded before its key/value projections,
  appended to its context so the layer projects them on a read);
* joint-attention DiTs (`joint_consistent.JointGather`): [B, H, L, D] over [text | image | tail],
  only image tokens shared; bank tokens are the keys and values as the attention sees them
  (after the block's norms and RoPE at the writer's positions, one [N, 2*H*D] row a token), and
  borrowed keys are moved to the chosen positions.

Shared by both (this file): steps recognised by sigma (never counted), warm-up, the step window
in fractions 0..1 of the model's noise schedule (a `steps.NoiseClock` given at reset, so split
runs equal the single run), a per-layer apply probability drawn from the seed, per-step token
draws seeded by (seed, step sigma, tokens) and shared by every layer and both guidance halves,
the story's sharing table and sliding window, strength as a blend with the plain call, and the
identity bank's write (the bank's steps and token positions, committed when sampling completes)
and read (a panel's characters' tokens, per guidance half).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .consistent import reference_table, story_reference_table
from .identity_bank import IdentityBank, width_mismatch
from .steps import NoiseClock, StepWindow, step_index, step_progress, step_sigma, warmup_step
from .token_sampling import ProbabilitySchedule, gate_draw, sample_token_indices


@dataclass(frozen=True)
class ConsistentConfig:
    keep_rates: tuple = (0.5, 0.5, 0.5, 0.5)  # UNet: at latent/1, /2, /4, /8 (image 1/8 .. 1/64)
    keep_double: float = 0.5  # DiT: double-stream / joint blocks (and SD3.5 Medium's "self")
    keep_single: float = 0.5  # DiT: single-stream blocks
    positions: str = "canvas"  # RoPE DiTs: where borrowed keys sit (joint_consistent.POSITION_MODES)
    blocks: str = "up"  # "up" (UNet output blocks, a DiT's later blocks) or "all"
    warmup_steps: int = 1
    steps: StepWindow = StepWindow()
    schedule: ProbabilitySchedule = ProbabilitySchedule(((0.0, 0.7), (0.4, 0.9)))
    window: int = 0
    seed: int = 0
    strength: float = 1.0

    def level_rate(self, level: int | None) -> float:
        """A UNet layer's keep-rate by its resolution level (None: unknown size, no sharing)."""
        if level is None:
            return 0.0
        return self.keep_rates[min(level, len(self.keep_rates) - 1)]

    def block_rate(self, kind: str) -> float:
        """A DiT block's keep-rate by its kind ("double", "single", "self")."""
        return self.keep_single if kind == "single" else self.keep_double


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


@dataclass(frozen=True)
class Call:
    """One self-attention call as the glue sees it."""

    layer: tuple  # (block, index, depth): the bank's layer key and the gate's draw key
    rows: int  # batch rows (guidance chunks x images)
    tokens: int  # shareable (image) tokens per row
    chunks: tuple  # cond_or_uncond labels of the batch's chunks
    sigma: float  # the call's sigma
    sample_sigmas: object = None  # the run's schedule (tensor or list), None when unknown
    rate: float = 0.0  # the layer's keep-rate (ConsistentConfig.level_rate / block_rate)


@dataclass
class Plan:
    """What the run decided for one call (a UNet block call reuses it from its attn1 patch)."""

    sigma: float
    layer: tuple
    chunks: tuple
    images: int
    active: bool
    rate: float
    step: int = 0  # step index in the sampler's schedule, and the schedule's number of steps
    steps: int = 0
    indices: torch.Tensor | None = None  # [images, k] shared token positions (None: nothing shared)
    refs: list = field(default_factory=list)  # per image: the images it takes tokens from
    bank: object = None  # the gather's note of the bank tokens it appended (UNet reads)


class Gather(Protocol):
    """The family-specific gather kernel (consistent.TokenGather, joint_consistent.JointGather)."""

    def plain(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...

    def share(self, q, k, v, plan: Plan, indices, refs: list, row_extra: list | None) -> torch.Tensor: ...

    def bank_extra(self, run: ConsistentRun, plan: Plan, q, k, v) -> tuple: ...


class ConsistentRun:
    """Settings + the per-run caches of one patch; `reset()` when sampling starts, `release()` after."""

    def __init__(self, config: ConsistentConfig, mode: Mode | None = None):
        self.config = config
        self.mode = mode or Mode()
        self.reset()

    def reset(self, clock: NoiseClock | None = None) -> None:
        """A new sampling run; `clock` places sigmas in the model's noise schedule (see steps.py)."""
        self.clock = clock
        self.indices: dict = {}  # (step sigma, tokens, images, keep-rate) -> LongTensor [B, k]
        self.gather: dict = {}  # gather indices reused by the layers of one shape
        self.repeated: dict = {}  # indices repeated over the guidance chunks
        self.steps: dict = {}  # sigma -> (warm-up step?, progress, step sigma)
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

    # ---- planning ------------------------------------------------------------------------
    def plan(self, call: Call) -> Plan | None:
        """The call's plan, None when its rows are not whole guidance chunks."""
        cfg, kind = self.config, self.mode.kind
        chunks = tuple(call.chunks) or (0,)
        if call.rows % len(chunks):
            return None
        images = call.rows // len(chunks)
        if call.sigma not in self.steps:
            t, progress = step_progress(call.sigma, call.sample_sigmas)
            sigma = step_sigma(call.sigma, call.sample_sigmas)
            if self.clock is not None:
                progress = self.clock.progress(sigma)
            warm = warmup_step(t, cfg.warmup_steps, call.sample_sigmas, self.clock)
            self.steps[call.sigma] = (warm, progress, sigma)
        warm, progress, sigma = self.steps[call.sigma]
        active = (
            cfg.strength > 0
            and not warm
            and cfg.steps.contains(progress)
            and gate_draw(cfg.seed, sigma, call.layer) < cfg.schedule.at(progress)
        )
        total = len(call.sample_sigmas) - 1 if call.sample_sigmas is not None else 0  # type: ignore[arg-type]
        plan = Plan(
            sigma=sigma,
            layer=call.layer,
            chunks=chunks,
            images=images,
            active=active,
            rate=call.rate,
            step=step_index(call.sigma, call.sample_sigmas) if kind == "write" else 0,
            steps=total,
        )
        if call.rate > 0 and ((active and kind == "plain") or kind == "write"):
            key = (sigma, call.tokens, images, call.rate)
            if key not in self.indices:
                if len(self.indices) > 64:  # a new step: earlier draws are done with
                    self.indices, self.gather, self.repeated = {}, {}, {}
                self.indices[key] = sample_token_indices(images, call.tokens, call.rate, cfg.seed, sigma)
            plan.indices = self.indices[key]
        plan.refs = self.mode.sharing(images, cfg.window) if kind in ("plain", "write") else [()] * images
        return plan

    # ---- the identity bank -----------------------------------------------------------
    def record(self, plan: Plan, tokens: int, take: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
        """A write run stores, per character and guidance half, `take(row, positions)` ([n, C]) of
        its identity images at the positions the bank's settings choose for this step."""
        staging = self.staging
        if self.mode.kind != "write" or staging is None:
            return
        cfg = self.config
        positions = staging.record_positions(
            plan.images, tokens, plan.rate, cfg.seed, plan.sigma, plan.step, plan.steps, cfg.warmup_steps
        )
        if positions is None:
            return
        labels = self.labels(plan.images)
        for c, half in enumerate(plan.chunks):
            if not staging.records_half(half):
                continue
            for name in sorted({lab for lab in labels if lab is not None}):
                rows = [i for i, lab in enumerate(labels) if lab == name]
                toks = torch.cat([take(c * plan.images + i, positions[i]) for i in rows], 0)
                staging.record(name, plan.sigma, plan.layer, toks, half=int(half), images=len(rows))

    def bank_tokens(self, plan: Plan, names, half, width: int) -> list[tuple[str, torch.Tensor]]:
        """(name, [n, width] tokens) of the named characters the bank holds for this call's step,
        layer and guidance half; tokens of another width are a BankMismatch naming the bank."""
        bank = self.mode.bank
        if bank is None:
            return []
        found = []
        for name in names:
            toks = bank.tokens(name, plan.sigma, plan.layer, half=int(half) if int(half) in (0, 1) else 0)
            if toks is None:
                toks = bank.tokens(name, plan.sigma, plan.layer, half=0)
            if toks is None:
                continue
            if toks.shape[-1] != width:
                raise width_mismatch(self.mode.node, bank, name, plan.layer, toks.shape[-1], width)
            found.append((name, toks))
        return found

    # ---- the attention call -----------------------------------------------------------
    def attention(self, q, k, v, plan: Plan | None, gather: Gather) -> torch.Tensor:
        """The call's attention with sharing (q, k, v in the gather's layout)."""
        if plan is None or not plan.active:
            return gather.plain(q, k, v)
        row_extra = None
        if self.mode.kind == "read":
            row_extra, k, v = gather.bank_extra(self, plan, q, k, v)
            if row_extra is None:
                return gather.plain(q, k, v)
        elif plan.indices is None or plan.images < 2 or not any(plan.refs):
            return gather.plain(q, k, v)
        # all guidance chunks in one call, rows in ComfyUI's order (an earlier replace sees the
        # batch layout it expects); references never cross a chunk
        b, chunks = plan.images, len(plan.chunks)
        refs = [tuple(c * b + j for j in plan.refs[i]) for c in range(chunks) for i in range(b)]
        out = gather.share(q, k, v, plan, self._batch_indices(plan, chunks), refs, row_extra)
        s = self.config.strength
        if s < 1.0:
            plain = gather.plain(q, k, v)
            out = plain + (out - plain) * s
        return out

    def _batch_indices(self, plan: Plan, chunks: int) -> torch.Tensor:
        if plan.indices is None:
            return torch.zeros(plan.images * chunks, 0, dtype=torch.long)
        key = (id(plan.indices), chunks)  # plan.indices stays alive in self.indices meanwhile
        if key not in self.repeated:
            self.repeated[key] = plan.indices.repeat(chunks, 1)
        return self.repeated[key]
