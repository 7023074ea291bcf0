"""Where a model call sits in the run (attention/steps.py): the rule every feature shares.

* A call is placed by its sigma alone. Heun's second evaluation of step t lands on sigma[t+1] and
  is that next step's evaluation (its draw, its gate; with warm-up 1 it already shares); DPM-2's
  midpoint evaluation lies between two schedule sigmas and belongs to the step it starts from.
* Step windows and the CSA probability schedule are measured in the model's own noise schedule
  (NoiseClock), as core's timestep ranges; the warm-up counts the first steps of a run from noise.
"""

import pytest
import torch

import comfy.sample

from consistent_inputs import CSA_DEFAULTS
from pack_loader import pure, submodule

steps = pure("attention.steps")
core = submodule("nodes.patch_core")
ca = submodule("nodes.consistent_attention")
ALWAYS_UP = dict(CSA_DEFAULTS, apply_probability="1")
LAYER = ("output", 3, 0)


def test_noise_clock_inverts_the_models_percent_to_sigma():
    clock = steps.NoiseClock(lambda p: 10.0 * (1.0 - p) ** 2, 10.0)
    assert clock.progress(10.0) == 0.0 and clock.progress(0.0) == 1.0
    assert clock.progress(2.5) == pytest.approx(0.5, abs=1e-9)
    assert clock.progress(1e-9) < 1.0  # only sigma 0 is the end: a window starting at 1.0 stays empty
    assert not steps.StepWindow(1.0, 1.0).contains(clock.progress(1e-9))
    assert clock.from_noise([10.0, 5.0, 0.0]) and not clock.from_noise([5.0, 2.0, 0.0])
    assert steps.warmup_step(0, 1, [10.0, 5.0, 0.0], clock)
    assert not steps.warmup_step(0, 1, [5.0, 2.0, 0.0], clock)  # a continued run has no warm-up
    assert steps.warmup_step(0, 1, [5.0, 2.0, 0.0], None)  # without the model: its own first step


def _calls(tiny, sampler, n_steps=3, cfg=5.0):
    """(sigma of the call, step sigma, active, token draw) at one layer, in call order, plus the output."""
    model, clip, _ = tiny("sd15")
    m = ca.ConsistentSelfAttention().patch(model, **ALWAYS_UP)[0]
    run = core.installed(m, "consistent")  # the UNet patch: plan(rows, tokens, extra) per block call
    plan, seen = run.plan, []

    def spy(rows, tokens, extra):
        p = plan(rows, tokens, extra)
        if p is not None and p.layer == LAYER and extra.get("storydiff_seen") is None:
            extra["storydiff_seen"] = True
            seen.append((float(extra["sigmas"].reshape(-1)[0]), p.sigma, p.active, p.indices))
        return p

    run.plan = spy
    out = clip.encode_from_tokens(
        clip.tokenize("a man in a red jacket"), return_pooled=True, return_dict=True
    )
    c = [[out["cond"].repeat(3, 1, 1), {"pooled_output": out["pooled_output"].repeat(3, 1)}]]
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latent = torch.zeros_like(noise)
    res = comfy.sample.sample(m, noise, n_steps, cfg, sampler, "normal", c, c, latent, seed=0)
    plain = comfy.sample.sample(model.clone(), noise, n_steps, cfg, sampler, "normal", c, c, latent, seed=0)
    return seen, res, plain


def test_heuns_second_evaluation_is_the_next_steps_evaluation(tiny):
    seen, out, plain = _calls(tiny, "heun")
    sig = [s for s, *_ in seen]
    assert len(sig) == 5 and sig[1] == sig[2] and sig[3] == sig[4]  # s0, s1 (2nd of step 0), s1, s2, s2
    active = [a for *_, a, _ in seen]
    assert active == [False, True, True, True, True]  # warm-up 1: only the call at s0 is plain
    assert seen[1][1] == seen[2][1] and torch.equal(seen[1][3], seen[2][3])  # same step sigma, same draw
    assert not torch.equal(out, plain)


def test_dpm2_midpoint_belongs_to_the_step_it_starts_from(tiny):
    seen, out, plain = _calls(tiny, "dpm_2")
    sig = [s for s, *_ in seen]
    assert sig[0] > sig[1] > sig[2]  # s0, the midpoint of step 0, s1
    assert seen[1][1] == sig[0]  # the midpoint's step sigma is s0
    assert [a for *_, a, _ in seen][:3] == [False, False, True]  # step 0 (both calls) is the warm-up
    assert not torch.equal(out, plain)


def test_cfg_one_shares_too(tiny):
    seen, out, plain = _calls(tiny, "euler", cfg=1.0)
    assert [a for *_, a, _ in seen] == [False, True, True] and not torch.equal(out, plain)
