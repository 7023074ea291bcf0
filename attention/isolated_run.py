"""Per-run state of the isolated branch: step tracking, map accumulation, masks per step.

Pure torch (no ComfyUI import). One `IsolatedRun` lives for one node execution; the ComfyUI
glue resets it when sampling starts and releases its caches when sampling ends (an OUTER_SAMPLE
wrapper with try/finally), so an interrupted run leaves nothing stale.

Decisions:
* Step index = position of the current sigma in the run's schedule (`sample_sigmas`) by the
  shared rule of `steps.py` (a midpoint between two sigmas belongs to the earlier step; Heun's
  second call at the next sigma is the next step's call). Never call counts. Windows use the
  step's place in the model's noise schedule (`NoiseClock`) when sampling knows the model.
* Masks used at step s come from the maps of steps < s ("the steps so far", as in the paper:
  one sampling run, no second generation). No online masks exist at a run's first step, so
  isolation starts at the first step that has maps and lies in the node's step range; given
  masks isolate from the first step. A run split over two samplers restarts its online masks in
  the second one (ComfyUI may rerun the second stage alone; see README).
* Thin evidence: online masks are used only once maps of `evidence_steps` steps exist (Isolated
  Attention: 2, so never from the first step's map alone), a map whose Otsu separation is below
  `min_separation` gives no mask (Otsu finds a "region" in any non-flat map, noise included) and
  a region below `min_area` of the panel is dropped. Given masks are not guarded.
* Maps are captured in the capture step window only; masks are recomputed once per step and
  cached for that step.
* User-supplied masks replace the online masks of their character for every step; overlaps
  between user masks go to the earlier character (there is no map to compute a CV from).
* Characters not tagged in a panel (story tags) have empty masks in that panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .cross_maps import MapAccumulator
from .otsu import panel_masks
from .steps import NoiseClock, StepWindow, step_count, step_index


@dataclass(frozen=True)
class RunSummary:
    """What a finished run leaves for readers (Story Attention Masks, measurements)."""

    maps: torch.Tensor  # [P, K, H, W] mean cross-attention maps over the captured steps
    masks: torch.Tensor | None  # [P, K, H, W] bool, from all captured steps
    masks_at_70: torch.Tensor | None  # the same from the first 70 % of the steps (stability)
    steps: int


@dataclass
class CharacterPlan:
    """Which character is where: fixed for a node execution."""

    names: list[str]
    present: list[list[bool]]  # [panel][character]
    positions: list[list[list[int]]]  # [panel][character] -> token positions in the panel's own context
    lengths: list[int]  # [panel] own context length (77·windows)
    ref_panel: list[int | None] = field(default_factory=list)  # [character] panel used as reference

    @property
    def panels(self) -> int:
        return len(self.present)


def first_appearances(present: list[list[bool]]) -> list[int | None]:
    """Reference panel of each character: the first panel that tags it (None if never tagged)."""
    K = len(present[0]) if present else 0
    return [next((p for p, row in enumerate(present) if row[k]), None) for k in range(K)]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = (a & b).sum().item()
    union = (a | b).sum().item()
    return 1.0 if union == 0 else inter / union


class IsolatedRun:
    def __init__(
        self,
        plan: CharacterPlan,
        capture: StepWindow | None = None,
        blur: float = 0.0,
        dilate: int = 0,
        min_area: float = 0.0,
        user_masks: dict[int, torch.Tensor] | None = None,
        min_separation: float = 0.0,
        evidence_steps: int = 1,
    ):
        self.plan = plan
        self.capture = capture or StepWindow()
        self.blur, self.dilate, self.min_area = blur, dilate, min_area
        # the thin-evidence guard: online masks need maps from `evidence_steps` steps, and a map that
        # does not split clearly in two (Otsu separation below `min_separation`) gives no mask
        self.min_separation, self.evidence_steps = min_separation, max(1, int(evidence_steps))
        self.user_masks = user_masks or {}  # character -> [1 or P, H, W] float
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------
    def reset(self, clock: NoiseClock | None = None) -> None:
        self.clock = clock  # places sigmas in the model's noise schedule (see steps.py)
        self.acc: MapAccumulator | None = None
        self.schedule: list[float] | None = None
        self._sig_obj: torch.Tensor | None = None
        self._sig_step = 0
        self._mask_cache: dict[int, torch.Tensor | None] = {}
        self.result: RunSummary | None = None

    def release(self) -> None:
        """End of sampling: keep only the small final summary (maps, masks) for readers."""
        if self.acc is not None and self.acc.steps:
            maps = self.acc.mean()
            assert maps is not None  # the accumulator has steps
            self.result = RunSummary(
                maps=maps,
                masks=self.masks_from(maps),
                masks_at_70=self.masks_at_fraction(0.7),
                steps=self.total_steps,
            )
        self.acc = None
        self._mask_cache = {}
        self._sig_obj = None

    # ---- steps ----------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return step_count(self.schedule)

    def step(self, sigmas: torch.Tensor, sample_sigmas: torch.Tensor | None) -> int:
        if sigmas is self._sig_obj:
            return self._sig_step
        if self.schedule is None and sample_sigmas is not None:
            self.schedule = [float(s) for s in sample_sigmas.detach().float().cpu()]
        sigma = float(sigmas.detach().reshape(-1)[0].float().cpu())
        self._sig_step = step_index(sigma, self.schedule) if self.schedule else 0
        self._sig_obj = sigmas
        return self._sig_step

    def fraction(self, step: int) -> float:
        """Position of `step` in the run: in the model's noise schedule when sampling knows the
        model (so a split run's second stage places its steps where the single run does), else
        step / steps."""
        if self.clock is not None and self.schedule and step < len(self.schedule):
            return self.clock.progress(self.schedule[step])
        return step / self.total_steps

    def capturing(self, step: int) -> bool:
        return self.capture.contains(self.fraction(step))

    # ---- maps and masks -------------------------------------------------------------
    def add_maps(self, step: int, maps: torch.Tensor, grid: tuple[int, int]) -> None:
        if self.acc is None:
            self.acc = MapAccumulator(grid)
        self.acc.add(step, maps)

    def _grid(self) -> tuple | None:
        return self.acc.grid if self.acc is not None else None

    def masks_from(self, maps: torch.Tensor | None, grid=None, device=None) -> torch.Tensor | None:
        return masks_from_maps(
            self.plan,
            maps,
            self.user_masks,
            grid,
            device,
            self.blur,
            self.dilate,
            self.min_area,
            self.min_separation,
        )

    def masks(self, step: int, grid=None, device=None) -> torch.Tensor | None:
        """Boolean masks [P, K, H, W] for use at `step` (from steps < step), cached per step."""
        if step not in self._mask_cache:
            acc = self.acc
            evidence = sum(1 for s in acc.steps if s < step) if acc is not None else 0
            maps = acc.mean(before_step=step) if acc is not None and evidence >= self.evidence_steps else None
            self._mask_cache[step] = self.masks_from(maps, grid or self._grid(), device)
        return self._mask_cache[step]

    def masks_at_fraction(self, fraction: float) -> torch.Tensor | None:
        """Masks from the maps of the first `fraction` of the steps (stability measurement)."""
        if self.acc is None or not self.acc.steps:
            return None
        bound = math.ceil(fraction * self.total_steps)
        return self.masks_from(self.acc.mean(before_step=bound))


def _scaled_user_masks(user_masks: dict, panels: int, grid, device) -> dict[int, torch.Tensor]:
    out = {}
    for k, m in user_masks.items():
        m = m.float().to(device)
        r = F.interpolate(m[:, None], size=tuple(grid), mode="bilinear", align_corners=False)[:, 0] > 0.5
        out[k] = r.expand(panels, *grid) if r.shape[0] == 1 else r
    return out


def masks_from_maps(
    plan: CharacterPlan,
    maps: torch.Tensor | None,
    user_masks: dict | None = None,
    grid=None,
    device=None,
    blur: float = 0.0,
    dilate: int = 0,
    min_area: float = 0.0,
    min_separation: float = 0.0,
) -> torch.Tensor | None:
    """Boolean masks [P, K, H, W] from maps [P, K, h, w] (Otsu + CV rule per panel), user masks
    replacing their character's online mask; None when there is neither."""
    user_masks = user_masks or {}
    if maps is None and not user_masks:
        return None
    P, K = plan.panels, len(plan.names)
    grid = grid or (tuple(maps.shape[-2:]) if maps is not None else None)
    device = device or (maps.device if maps is not None else torch.device("cpu"))
    if grid is None:
        return None
    user = _scaled_user_masks(user_masks, P, grid, device)
    out = torch.zeros(P, K, *grid, dtype=torch.bool, device=device)
    for p in range(P):
        present = [plan.present[p][k] and k not in user for k in range(K)]
        if maps is not None and any(present):
            out[p] = panel_masks(maps[p], present, blur, dilate, min_area, min_separation)
        taken = out[p].any(0)
        for k in sorted(user):
            if plan.present[p][k]:
                mk = user[k][p] & ~taken
                out[p, k] = mk
                taken = taken | mk
    return out
