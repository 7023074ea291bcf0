"""Steps, progress and step windows: one definition for every feature of the pack.

Pure (no ComfyUI import). A step is recognised by the current sigma's place in the run's
schedule (`sample_sigmas`), never by counting model calls, so split or batched CFG and samplers
that call the model several times a step all agree.

* `step_index`: the step whose interval [sigmas[t], sigmas[t+1]) holds sigma. A model call is
  placed by its sigma alone: an evaluation between two schedule sigmas (DPM-2's midpoint, DPM++
  2S's intermediate sigma) belongs to the step it starts from; an evaluation *at* the next
  schedule sigma (Heun's and DPM++ 2M SDE-style second evaluation of step t lands on sigma[t+1])
  is that next step's evaluation: it takes step t+1's token draw and layer gate, and with a
  warm-up of one step it already shares. (A sigma alone cannot tell the two calls at sigma[t+1]
  apart, and counting calls is what this module exists to avoid.)
* `NoiseClock`: the position of a sigma in the *model's own* noise schedule, through
  `model_sampling.percent_to_sigma` (0 at the model's largest sigma, 1 at sigma 0), as core's
  timestep ranges (ConditioningSetTimestepRange) measure it. Every step window and the CSA
  probability schedule use it when sampling knows the model (the patches' OUTER_SAMPLE wrapper
  builds it), so a run split over two KSamplerAdvanced nodes, a base -> refiner chain or a
  two-expert sampler places every step exactly where the single run does. The warm-up counts the
  first steps of a run that starts from pure noise (its first sigma is the model's largest); a
  stage that continues a run (KSamplerAdvanced from step 4, img2img with denoise < 1) has none.
* `step_progress`: (t, t / steps), the fraction of the run done before the step, for calls made
  without a known model (0 at the first step, never 1).
* `StepWindow`: a [start, end] range of that progress in fractions 0..1 (as core's
  start_percent/end_percent); both ends inclusive.
* `window_from_inputs`: reads a node's start/end inputs. Up to release 0.1 Consistent
  Self-Attention took percents 0..100; a saved workflow with a value above 1 is read on that old
  scale (both ends divided by 100) and the caller tells the user so. A value of exactly 1 or less
  is always a fraction.
"""

from __future__ import annotations

from dataclasses import dataclass


def step_index(sigma: float, sample_sigmas) -> int:
    """Index t of the step whose interval [sigmas[t], sigmas[t+1]) holds sigma (schedule decreasing).

    Returns 0 when no schedule is known.
    """
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return 0
    tol = abs(float(sigma)) * 1e-5 + 1e-8
    count = sum(1 for s in sample_sigmas[:-1] if float(s) >= float(sigma) - tol)
    return max(0, min(len(sample_sigmas) - 2, count - 1))


def step_count(sample_sigmas) -> int:
    """Number of steps of the schedule (1 when unknown)."""
    return max(1, len(sample_sigmas) - 1) if sample_sigmas is not None else 1


def step_progress(sigma: float, sample_sigmas) -> tuple[int, float]:
    """(step index, fraction of the run done before this step, 0 at the first step)."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return 0, 0.0
    t = step_index(sigma, sample_sigmas)
    return t, t / step_count(sample_sigmas)


def step_sigma(sigma: float, sample_sigmas) -> float:
    """The schedule sigma that names sigma's step (sigma itself when no schedule is known)."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return float(sigma)
    return float(sample_sigmas[step_index(sigma, sample_sigmas)])


LAST = 1.0 - 1e-6  # progress of the smallest positive sigma: 1 itself is sigma 0, as in core


class NoiseClock:
    """Where a sigma lies in the model's own noise schedule: progress in [0, 1] (see module doc).

    percent_to_sigma: the model's `model_sampling.percent_to_sigma` (decreasing in percent);
    sigma_max: the model's largest sigma. Progress is found by bisection and cached per sigma; a
    positive sigma stays below 1 (core's percent_to_sigma(1.0) is 0), so a window starting at 1.0
    is never entered, however low the schedule's last sigma.
    """

    def __init__(self, percent_to_sigma, sigma_max: float):
        self._to_sigma = percent_to_sigma
        self.sigma_max = float(sigma_max)
        self._progress: dict[float, float] = {}

    def progress(self, sigma: float) -> float:
        sigma = float(sigma)
        if sigma not in self._progress:
            if sigma <= 0.0:
                value = 1.0
            else:
                lo, hi = 0.0, 1.0  # to_sigma(lo) >= sigma >= to_sigma(hi)
                for _ in range(50):
                    mid = 0.5 * (lo + hi)
                    if float(self._to_sigma(mid)) > sigma:
                        lo = mid
                    else:
                        hi = mid
                value = 0.5 * (lo + hi)
                value = 0.0 if value < 1e-12 else min(value, LAST)
            self._progress[sigma] = value
        return self._progress[sigma]

    def from_noise(self, sample_sigmas) -> bool:
        """Whether a schedule starts at the model's largest sigma (a run from pure noise)."""
        if sample_sigmas is None or len(sample_sigmas) < 1:
            return True
        return float(sample_sigmas[0]) >= self.sigma_max * (1.0 - 1e-3)


def warmup_step(t: int, warmup_steps: int, sample_sigmas, clock: NoiseClock | None) -> bool:
    """Whether step t (index in the run's own schedule) is one of the warm-up steps: the first
    `warmup_steps` steps of a run from pure noise; without a clock, of any run."""
    if clock is not None and not clock.from_noise(sample_sigmas):
        return False
    return t < warmup_steps


@dataclass(frozen=True)
class StepWindow:
    """Progress range [start, end] (fractions of the steps, both inclusive)."""

    start: float = 0.0
    end: float = 1.0

    def contains(self, progress: float) -> bool:
        return self.start - 1e-9 <= progress <= self.end + 1e-9


def is_legacy_percent(start: float, end: float) -> bool:
    """True for the old 0..100 scale: a value above 1 cannot be a fraction."""
    return float(start) > 1.0 or float(end) > 1.0


def window_from_inputs(start: float, end: float) -> StepWindow:
    """The window of a node's start/end inputs; old 0..100 percents are divided by 100."""
    if is_legacy_percent(start, end):
        return StepWindow(float(start) / 100.0, float(end) / 100.0)
    return StepWindow(float(start), float(end))


def window_error(node: str, start: float, end: float, legacy_ok: bool = False) -> str | None:
    """The message ComfyUI shows before queueing for a bad window, else None."""
    top = 100.0 if legacy_ok and is_legacy_percent(start, end) else 1.0
    for name, value in (("start_percent", start), ("end_percent", end)):
        if not 0.0 <= float(value) <= top:
            return f"{node}: {name} is {value}; use a fraction of the steps between 0 and 1."
    if float(start) > float(end):
        return f"{node}: start_percent ({start}) is after end_percent ({end}); swap them (start ≤ end)."
    return None
