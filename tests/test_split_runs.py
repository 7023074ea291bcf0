"""A sampling run split over two KSamplerAdvanced nodes is the same run (issue 10, finding 2).

The step position of every feature comes from the sigma through the model's own sampling
(as core's timestep ranges), not from the stage's own schedule; so 0-4 then 4-8 (leftover noise)
equals one 8-step run to float tolerance.
"""

import pytest
import torch

from consistent_inputs import CSA_DEFAULTS
from pack_loader import submodule

ca = submodule("nodes.consistent_attention")
CSA = dict(CSA_DEFAULTS)


def ksampler_advanced(
    model,
    positive,
    negative,
    latent,
    steps,
    start,
    end,
    add_noise,
    leftover,
    seed=0,
    sampler="euler",
    scheduler="normal",
):
    import nodes as comfy_nodes

    node = comfy_nodes.KSamplerAdvanced()
    return node.sample(
        model,
        "enable" if add_noise else "disable",
        seed,
        steps,
        5.0,
        sampler,
        scheduler,
        positive,
        negative,
        latent,
        start,
        end,
        "enable" if leftover else "disable",
    )[0]


def split_and_whole(model, positive, negative, n, steps=8, cut=4, hw=8, **kw):
    latent = {"samples": torch.zeros(n, 4, hw, hw)}
    first = ksampler_advanced(model, positive, negative, latent, steps, 0, cut, True, True, **kw)
    split = ksampler_advanced(model, positive, negative, first, steps, cut, 10000, False, False, **kw)
    whole = ksampler_advanced(model, positive, negative, latent, steps, 0, 10000, True, False, **kw)
    return split["samples"], whole["samples"]


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip, _ = tiny("sd15")
    from isolated_helpers import encode_story

    text = "[Bob]: a man, red jacket\n[Bob] waits\n[Bob] runs\n[Bob] sleeps"
    positive, negative, story, panels = encode_story(clip, text)
    return model, clip, positive, negative, story, panels


def gap(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
def test_csa_split_at_step_4_of_8_equals_the_whole_run(sd15, scheduler):
    model, clip, pos, neg, story, P = sd15
    split, whole = split_and_whole(model.clone(), pos, neg, P, scheduler=scheduler)
    vanilla = gap(split, whole)
    m = ca.ConsistentSelfAttention().patch(model, **CSA)[0]
    split, whole = split_and_whole(m, pos, neg, P, scheduler=scheduler)
    _, plain = split_and_whole(model.clone(), pos, neg, P, scheduler=scheduler)
    assert gap(whole, plain) > 1.0  # CSA acts
    print(f"\n[split run] {scheduler}: vanilla gap {vanilla:.2e}, CSA gap {gap(split, whole):.2e}")
    assert gap(split, whole) <= max(10 * vanilla, 1e-4)


TWO = """[Bob]: a man with short black hair, red jacket
[Alice]: a woman with long silver hair, green dress
[Bob] waits at a bus stop
[Alice] reads in a library
[Bob] and [Alice] walk in a park"""


def _halves(size=(8, 8)):
    left = torch.zeros(1, *size)
    left[..., : size[1] // 2] = 1.0
    return left, 1.0 - left


def test_isolation_step_window_follows_the_sigma_across_a_split(tiny):
    """start_percent 0.5 of an 8-step run: the first stage (steps 0-3, all before half-way) must not
    isolate at all; counted in its own 4-step schedule, its steps 2 and 3 looked like 50 % and 75 %."""
    from isolated_helpers import encode_story, isolated

    model, clip, _ = tiny("sd15")
    pos, neg, story, P = encode_story(clip, TWO)
    bob, alice = _halves()
    m = isolated(model, clip, story, mask_1=bob, mask_2=alice, start_percent=0.5)
    latent = {"samples": torch.zeros(P, 4, 8, 8)}
    first = ksampler_advanced(m, pos, neg, latent, 8, 0, 4, True, True)
    plain = ksampler_advanced(model.clone(), pos, neg, latent, 8, 0, 4, True, True)
    assert torch.equal(first["samples"], plain["samples"])


def test_isolation_with_given_masks_split_equals_the_whole_run(tiny):
    """With user masks (and no re-weighting, which reads the run's own maps) a split run is the same
    run. Online masks restart in the second stage: see docs/isolated-attention.md, split runs."""
    from isolated_helpers import encode_story, isolated

    model, clip, _ = tiny("sd15")
    pos, neg, story, P = encode_story(clip, TWO)
    bob, alice = _halves()
    m = isolated(model, clip, story, mask_1=bob, mask_2=alice, reweight=0.0)
    split, whole = split_and_whole(model.clone(), pos, neg, P)
    vanilla = gap(split, whole)
    split, whole = split_and_whole(m, pos, neg, P)
    _, plain = split_and_whole(model.clone(), pos, neg, P)
    assert gap(whole, plain) > 1.0  # isolation acts
    print(f"\n[split run] given masks: vanilla gap {vanilla:.2e}, isolated gap {gap(split, whole):.2e}")
    assert gap(split, whole) <= max(10 * vanilla, 1e-4)
