"""Steps, progress and step windows: one definition for every feature of the pack.

Pure (no ComfyUI import). A step is recognised by the current sigma's place in the run's
schedule (`sample_sigmas`), never by counting model calls, so split or batched CFG and samplers
that call the model several times a step all agree.

* `step_index`: the step whose interval [sigmas[t], sigmas[t+1]) holds sigma; exact schedule
  sigmas map to their own step, intermediate evaluations (Heun, DPM-2) to the step they belong to.
* `step_progress`: (t, t / steps), the fraction of the run done before the step: 0 at the first
  step, never 1 (the last step of n starts at (n-1)/n).
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
