"""One run of Consistent Self-Attention on a DiT: settings, the per-attention-call plan, the run's caches.

Pure torch (no ComfyUI import). The ComfyUI glue (nodes/patch_dit.py) describes each joint
attention call it sees as a `JointCall` (which block, where the image tokens are, the guidance
chunks, the sigma) and calls `JointConsistentRun.attention` with the attention kernel injected.

Rules shared with the UNet path: per-step draws seeded by (seed, step sigma, tokens) and shared
by every block and both guidance halves; steps recognised by sigma, never by counting calls;
warm-up steps, a step window in fractions 0..1, a per-block apply probability schedule drawn from
the seed, a sliding window over the story, strength as a blend with the plain call. DiT-specific:
one token resolution, so keep-rates are per block type ("double" = text and image in two streams
joined for attention, "single" = one joint stream, "self" = an image-only self-attention such as
SD3.5 Medium's second attention); text tokens are never shared; borrowed keys are moved to the
chosen positions (see attention/joint_consistent.py).

Identity bank on DiTs: a write run records, per (character, step sigma, block, guidance half),
the shared image tokens' keys and values as the attention sees them (after the block's norms and
RoPE at the writer's grid positions), stored as one [N, 2*H*D] row per token; a read run appends
the tokens of each panel's characters to that panel's keys and values (character n of a panel
at position slot n, as borrowed panels are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .consistent_run import Mode
from .identity_bank import width_mismatch
from .joint_consistent import JointLayout, joint_consistent_attention, rotate_pairs
from .steps import NoiseClock, StepWindow, step_index, step_progress, step_sigma, warmup_step
from .token_sampling import ProbabilitySchedule, gate_draw, sample_token_indices

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Rotations = Callable[[int], list]  # slots -> [rotation [D/2, 2, 2] or None] * slots


@dataclass(frozen=True)
class JointConfig:
    keep_double: float = 0.5
    keep_single: float = 0.5
    blocks: frozenset | None = None  # covered (kind, index) blocks; None = every block
    positions: str = "canvas"
    warmup_steps: int = 1
    steps: StepWindow = StepWindow()
    schedule: ProbabilitySchedule = ProbabilitySchedule(((0.0, 0.7), (0.4, 0.9)))
    window: int = 0
    seed: int = 0
    strength: float = 1.0

    def keep_rate(self, kind: str) -> float:
        return self.keep_single if kind == "single" else self.keep_double

    def covers(self, block: tuple) -> bool:
        return self.blocks is None or (block[0], int(block[1])) in self.blocks


@dataclass(frozen=True)
class JointCall:
    """One joint attention call as the glue sees it."""

    block: tuple  # (kind, index), kind "double" | "single" | "self"
    layout: JointLayout
    chunks: tuple  # cond_or_uncond labels of the batch's chunks
    sigma: float  # the call's sigma
    sample_sigmas: object = None  # the run's schedule (tensor or list), None when unknown


@dataclass
class JointConsistentRun:
    """Settings + the per-run caches of one DiT patch; `reset()` when sampling starts, `release()` after."""

    config: JointConfig
    mode: Mode = field(default_factory=Mode)

    def __post_init__(self):
        self.reset()

    def reset(self, clock: NoiseClock | None = None) -> None:
        """A new sampling run; `clock` places sigmas in the model's noise schedule (see steps.py)."""
        self.clock = clock
        self.indices: dict = {}  # (step sigma, tokens, images, keep-rate) -> LongTensor [B, k]
        self.steps: dict = {}  # sigma -> (step index, progress, step sigma)
        kind, bank = self.mode.kind, self.mode.bank
        self.staging = bank.empty_like() if kind == "write" and bank is not None else None

    def release(self) -> None:
        self.indices, self.steps = {}, {}
        self.staging = None
        if self.mode.kind == "read" and self.mode.bank is not None:
            self.mode.bank.release()  # the tokens this run unpacked or read from the bank's file

    def labels(self, images: int) -> tuple:
        labels = self.mode.labels
        return tuple(labels) * images if len(labels) == 1 else tuple(labels)

    def _step(self, call: JointCall) -> tuple[bool, float, float]:
        """(warm-up step?, progress, step sigma), by the shared rule of steps.py."""
        if call.sigma not in self.steps:
            t, progress = step_progress(call.sigma, call.sample_sigmas)
            sigma = step_sigma(call.sigma, call.sample_sigmas)
            if self.clock is not None:
                progress = self.clock.progress(sigma)
            warm = warmup_step(t, self.config.warmup_steps, call.sample_sigmas, self.clock)
            self.steps[call.sigma] = (warm, progress, sigma)
        return self.steps[call.sigma]

    def _indices(self, sigma: float, tokens: int, images: int, rate: float) -> torch.Tensor:
        key = (sigma, tokens, images, rate)
        if key not in self.indices:
            if len(self.indices) > 64:  # a new step: earlier draws are done with
                self.indices = {}
            self.indices[key] = sample_token_indices(images, tokens, rate, self.config.seed, sigma)
        return self.indices[key]

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        call: JointCall,
        kernel: Kernel,
        rotations: Rotations,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The joint attention of one block call (q, k, v [B_total, H, L, D]) with sharing."""
        cfg, kind = self.config, self.mode.kind
        chunks = len(call.chunks) or 1
        rows = q.shape[0]
        if not cfg.covers(call.block) or rows % chunks or cfg.strength <= 0:
            return kernel(q, k, v, mask)
        images = rows // chunks
        warm, progress, sigma = self._step(call)
        layer = (call.block[0], int(call.block[1]), 0)
        active = (
            not warm
            and cfg.steps.contains(progress)
            and gate_draw(cfg.seed, sigma, layer) < cfg.schedule.at(progress)
        )
        rate = cfg.keep_rate(call.block[0])
        lay = call.layout
        indices = None
        if rate > 0 and ((active and kind == "plain") or kind == "write"):
            indices = self._indices(sigma, lay.img_len, images, rate)
        total = len(call.sample_sigmas) - 1 if call.sample_sigmas is not None else 0
        if kind == "write" and self.staging is not None:
            positions = self.staging.record_positions(  # the bank's steps and tokens, as on UNets
                images, lay.img_len, rate, cfg.seed, sigma,
                step_index(call.sigma, call.sample_sigmas), total, cfg.warmup_steps,
            )  # fmt: skip
            if positions is not None:
                self._record(k, v, lay, positions, call, sigma, layer, images)
        if not active:
            return kernel(q, k, v, mask)
        labels = self.labels(images) if kind != "plain" else None
        refs = self.mode.sharing(images, cfg.window) if kind in ("plain", "write") else [()] * images
        row_extra = None
        if kind == "read":
            row_extra = self._bank_rows(q, call, sigma, layer, images, labels, rotations)
            if row_extra is None:
                return kernel(q, k, v, mask)
        elif indices is None or images < 2 or not any(refs):
            return kernel(q, k, v, mask)
        all_refs = [tuple(c * images + j for j in refs[i]) for c in range(chunks) for i in range(images)]
        all_idx = indices.repeat(chunks, 1) if indices is not None else torch.zeros(rows, 0, dtype=torch.long)
        slots = max((len(r) for r in refs), default=0)
        rots = rotations(slots) if slots and indices is not None else None
        out = joint_consistent_attention(q, k, v, lay, all_idx, all_refs, kernel, rots, row_extra, mask)
        s = cfg.strength
        if s < 1.0:
            plain = kernel(q, k, v, mask)
            out = plain + (out - plain) * s
        return out

    # ---- identity bank -----------------------------------------------------------------
    def _record(self, k, v, lay: JointLayout, indices, call: JointCall, sigma, layer, images) -> None:
        labels = self.labels(images)
        idx = indices.to(k.device) + lay.img_start
        for c, half in enumerate(call.chunks):
            if not self.staging.records_half(half):
                continue
            for name in sorted({lab for lab in labels if lab is not None}):
                toks = []
                rows = [i for i, lab in enumerate(labels) if lab == name]
                for i in rows:
                    row = c * images + i
                    kr, vr = k[row][:, idx[i]], v[row][:, idx[i]]  # [H, n, D]
                    toks.append(torch.cat([_flat(kr), _flat(vr)], -1))
                self.staging.record(name, sigma, layer, torch.cat(toks, 0), half=int(half), images=len(rows))

    def _bank_rows(self, q, call: JointCall, sigma, layer, images, labels, rotations) -> list | None:
        heads, d = q.shape[1], q.shape[-1]
        bank, found, out = self.mode.bank, False, []
        cache: dict = {}
        for half in call.chunks:
            for i in range(images):
                names = tuple(labels[i])
                key = (int(half), names)
                if key not in cache:
                    cache[key] = self._bank_tokens(
                        bank, names, sigma, layer, int(half), heads, d, rotations, q
                    )
                entry = cache[key]
                out.append(None if entry is None else (*entry, key))
                found = found or entry is not None
        return out if found else None

    def _bank_tokens(self, bank, names, sigma, layer, half, heads, d, rotations, q):
        ks, vs = [], []
        rots = rotations(len(names)) if names else []
        for n, name in enumerate(names):
            toks = bank.tokens(name, sigma, layer, half=half if half in (0, 1) else 0)
            if toks is None:
                toks = bank.tokens(name, sigma, layer, half=0)
            if toks is None:
                continue
            if toks.shape[-1] != 2 * heads * d:
                raise width_mismatch(self.mode.node, bank, name, layer, toks.shape[-1], 2 * heads * d)
            toks = toks.to(device=q.device, dtype=q.dtype)
            kb = toks[:, : heads * d].reshape(-1, heads, d).transpose(0, 1)  # [H, n, D]
            vb = toks[:, heads * d :].reshape(-1, heads, d).transpose(0, 1)
            if rots and rots[n] is not None:
                kb = rotate_pairs(kb, rots[n].to(kb.device))
            ks.append(kb)
            vs.append(vb)
        if not ks:
            return None
        return torch.cat(ks, 1), torch.cat(vs, 1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[H, n, D] -> [n, H*D]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)
