"""Consistent Self-Attention that follows the story (issue 10, finding 1).

With the Story Prompt's STORY connected, a panel takes shared tokens only from panels whose
characters it all shows; [NC] and untagged panels neither give nor take. Checked bit for bit
through real sampling: re-noising one panel must leave every panel that does not read from it
unchanged.
"""

import pytest
import torch

import comfy.sample

from consistent_inputs import CSA_DEFAULTS
from isolated_helpers import encode_story
from pack_loader import submodule

ca = submodule("nodes.consistent_attention")
StoryError = submodule("nodes.common").StoryError
ALWAYS = dict(CSA_DEFAULTS, blocks="all", warmup_steps=0, end_percent=100.0, apply_probability="1")
STORY = """[Bob]: a man, red jacket
[Alice]: a woman, green dress
[Bob] waits at a bus stop
[Alice] reads in a library
[NC] an empty street at night
[Bob] and [Alice] walk in a park
[Bob] sleeps
a lighthouse at dawn"""  # panels: Bob, Alice, NC, Bob+Alice, Bob, untagged


@pytest.fixture(scope="module")
def setup(tiny):
    model, clip, _ = tiny("sd15")
    pos, neg, story, P = encode_story(clip, STORY)
    return model, pos, neg, story, P


def run(model, pos, neg, noise, steps=2):
    latent = torch.zeros_like(noise)
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", pos, neg, latent, seed=0)


def renoised(noise, panel, seed=99):
    other = noise.clone()
    other[panel] = torch.randn(noise.shape[1:], generator=torch.Generator().manual_seed(seed))
    return other


def test_panels_without_characters_neither_give_nor_take(setup):
    model, pos, neg, story, P = setup
    noise = torch.randn(P, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    m = ca.ConsistentSelfAttention().patch(model, story=story, **ALWAYS)[0]
    base = run(m, pos, neg, noise)
    assert not torch.equal(base, run(model.clone(), pos, neg, noise))  # CSA acts
    for empty in (2, 5):  # [NC] and untagged: re-noising them moves no other panel...
        out = run(m, pos, neg, renoised(noise, empty))
        others = [p for p in range(P) if p != empty]
        assert torch.equal(out[others], base[others]), empty
    # ...and re-noising every other panel leaves them as they were
    out = run(
        m,
        pos,
        neg,
        torch.stack([noise[p] if p in (2, 5) else renoised(noise, p, 7 + p)[p] for p in range(P)]),
    )
    assert torch.equal(out[[2, 5]], base[[2, 5]])


def test_a_panel_takes_only_from_panels_whose_characters_it_shows(setup):
    model, pos, neg, story, P = setup
    noise = torch.randn(P, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    m = ca.ConsistentSelfAttention().patch(model, story=story, **ALWAYS)[0]
    base = run(m, pos, neg, noise)
    out = run(m, pos, neg, renoised(noise, 1))  # Alice's solo panel
    assert torch.equal(out[[0, 4]], base[[0, 4]])  # Bob's solo panels never read Alice's tokens
    assert not torch.equal(out[3], base[3])  # the Bob-and-Alice panel does
    out = run(m, pos, neg, renoised(noise, 3))  # the Bob-and-Alice panel gives to nobody
    assert torch.equal(out[[0, 1, 4]], base[[0, 1, 4]])
    out = run(m, pos, neg, renoised(noise, 0))  # Bob's first panel gives to Bob's others
    assert not torch.equal(out[4], base[4]) and not torch.equal(out[3], base[3])
    assert torch.equal(out[1], base[1])


def test_without_a_story_every_image_shares_with_every_other(setup):
    model, pos, neg, story, P = setup
    noise = torch.randn(P, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    m = ca.ConsistentSelfAttention().patch(model, **ALWAYS)[0]
    base = run(m, pos, neg, noise)
    out = run(m, pos, neg, renoised(noise, 2))
    assert all(not torch.equal(out[p], base[p]) for p in range(P))


def test_batch_size_must_be_the_panel_count_before_sampling(setup):
    """Issue 14, item 3: caught before the first step, naming batch_size and panel_count."""
    model, pos, neg, story, P = setup
    m = ca.ConsistentSelfAttention().patch(model, story=story, **ALWAYS)[0]
    steps = []
    noise = torch.zeros(2, 4, 8, 8)
    with pytest.raises(StoryError) as e:
        comfy.sample.sample(
            m,
            noise,
            2,
            5.0,
            "euler",
            "normal",
            pos,
            neg,
            torch.zeros_like(noise),
            seed=0,
            callback=lambda *a: steps.append(a[0]),
        )
    msg = str(e.value)
    assert steps == [] and "batch_size" in msg and "panel_count" in msg and "6" in msg and "2" in msg, msg
    assert "Fix it at the Consistent Self-Attention node" in msg
