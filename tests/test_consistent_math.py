"""Pure CSA math: seeded token sampling, schedules, windows, gathering attention vs dense formulations."""

import pytest
import torch

import reference_attention as reference
from pack_loader import pure

ts = pure("attention.token_sampling")
steps = pure("attention.steps")
cs = pure("attention.consistent")


def test_token_sampling_is_seeded_per_step_and_resolution():
    a = ts.sample_token_indices(4, 64, 0.5, seed=3, sigma=2.5)
    assert a.shape == (4, 32) and a.dtype == torch.long
    assert torch.equal(a, ts.sample_token_indices(4, 64, 0.5, seed=3, sigma=2.5))  # same step: same draw
    assert not torch.equal(a, ts.sample_token_indices(4, 64, 0.5, seed=3, sigma=2.4))  # next step: redrawn
    assert not torch.equal(a, ts.sample_token_indices(4, 64, 0.5, seed=4, sigma=2.5))
    for row in a:  # distinct, sorted, in range
        assert torch.equal(row, row.unique()) and int(row.max()) < 64
    assert not all(torch.equal(a[0], r) for r in a[1:])  # per image
    assert ts.sample_token_indices(3, 10, 0.0, 0, 1.0).shape == (3, 0)
    assert torch.equal(ts.sample_token_indices(2, 10, 1.0, 0, 1.0)[1], torch.arange(10))
    with pytest.raises(ValueError):
        ts.tokens_to_keep(10, 1.5)


def test_probability_schedule_and_gate():
    s = ts.parse_probability_schedule("0.7, 0.9@40")
    assert s.at(0.0) == 0.7 and s.at(0.39) == 0.7 and s.at(0.4) == 0.9 and s.at(1.0) == 0.9
    assert ts.parse_probability_schedule("1").at(0.5) == 1.0
    for bad in ("", "0.7, 0.9", "1.5", "0.5@150", "x@3"):
        with pytest.raises(ValueError):
            ts.parse_probability_schedule(bad)
    draws = [ts.gate_draw(0, 3.0, ("output", i, 0)) for i in range(200)]
    assert all(0 <= d < 1 for d in draws) and 0.3 < sum(d < 0.5 for d in draws) / 200 < 0.7
    assert draws[5] == ts.gate_draw(0, 3.0, ("output", 5, 0))


def test_steps_are_recognised_by_sigma():
    sigmas = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert [steps.step_index(s, sigmas) for s in sigmas[:-1]] == [0, 1, 2, 3]
    assert steps.step_index(5.0, sigmas) == 1  # a Heun/DPM-2 midpoint belongs to its step
    assert steps.step_progress(3.0, sigmas) == (2, 0.5)
    assert steps.step_sigma(5.0, sigmas) == 7.0
    assert steps.step_index(3.0, None) == 0


def test_reference_table_windows_slide_and_stay_flat():
    assert cs.reference_table(4) == [(1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2)]
    table = cs.reference_table(32, window=5)  # a window of 5 images: each sees its 4 nearest
    assert all(len(r) == 4 and i not in r for i, r in enumerate(table))
    assert table[0] == (1, 2, 3, 4) and table[10] == (8, 9, 11, 12) and table[31] == (27, 28, 29, 30)
    assert cs.reference_table(4, window=4) == cs.reference_table(4)
    assert cs.reference_table(3, window=1) == [(), (), ()]
    assert cs.reference_table(4, groups=["a", "b", "a", None]) == [(2,), (), (0,), ()]


def test_downscale_level_follows_ceil_rounding():
    assert [cs.downscale_level((10, 14), hw) for hw in [(10, 14), (5, 7), (3, 4), (2, 2)]] == [0, 1, 2, 3]


def test_downscale_level_of_a_deep_shrink_size_is_the_nearest_level():
    # Kohya Deep Shrink x1.5 after input block 3 of a 128x128 latent: 64 -> 43, then 22, 11; each lies
    # just below the geometric middle of two levels (45, 23, 11.3), so it takes the smaller level's rate
    assert [cs.downscale_level((128, 128), (s, s)) for s in (43, 22, 11)] == [2, 3, 4]
    assert [cs.downscale_level((128, 128), (s, s)) for s in (48, 24, 12)] == [1, 2, 3]
    # x3 at a 16x16 latent: 8 -> 3 (between 4x4 and 2x2: 9 tokens is nearer 16 than 4 in log scale)
    assert cs.downscale_level((16, 16), (3, 3)) == 2
    assert cs.downscale_level((16, 16), (5, 5)) == 2
    assert cs.downscale_level((10, 14), (4, 5)) == 2


def _qkv(b=4, n=24, c=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, c, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("window", [0, 3])
def test_gathering_equals_the_dense_masked_formulation(window):
    q, k, v = _qkv()
    idx = ts.sample_token_indices(4, 24, 0.5, seed=1, sigma=1.0)
    refs = cs.reference_table(4, window)
    ours = cs.consistent_attention(q, k, v, 4, idx, refs)
    dense = reference.dense_masked_attention(q, k, v, 4, idx, refs)
    assert torch.allclose(ours, dense, atol=1e-10)


def test_keep_rate_one_is_attention_over_all_story_tokens():
    q, k, v = _qkv(b=3, n=16)
    idx = ts.sample_token_indices(3, 16, 1.0, 0, 1.0)
    ours = cs.consistent_attention(q, k, v, 2, idx, cs.reference_table(3))
    allk, allv = k.reshape(1, 48, 32).expand(3, -1, -1), v.reshape(1, 48, 32).expand(3, -1, -1)
    assert torch.allclose(ours, cs.sdpa(q, allk, allv, 2), atol=1e-10)


def test_no_references_is_plain_attention_and_rows_can_differ():
    q, k, v = _qkv(b=3)
    idx = torch.zeros(3, 0, dtype=torch.long)
    assert torch.equal(cs.consistent_attention(q, k, v, 4, idx, [(), (), ()]), cs.sdpa(q, k, v, 4))
    ek, ev = torch.randn(5, 32, dtype=torch.float64), torch.randn(5, 32, dtype=torch.float64)
    out = cs.consistent_attention(q, k, v, 4, idx, [(), (), ()], [None, (ek, ev, "bob"), None])
    assert torch.equal(out[0], cs.sdpa(q[:1], k[:1], v[:1], 4)[0])
    ref1 = cs.sdpa(q[1:2], torch.cat([k[1:2], ek[None]], 1), torch.cat([v[1:2], ev[None]], 1), 4)
    assert torch.allclose(out[1], ref1[0], atol=1e-12)


def test_story_references_share_only_through_the_characters_a_panel_shows():
    tags = [["Bob"], ["Alice"], ["Bob", "Alice"], [], ["Bob"], ["Alice", "Bob"]]
    assert cs.story_reference_table(tags) == [
        (4,),  # Bob alone: Bob's other solo panel only, never a panel with Alice in it
        (),  # Alice alone: nobody else shows only Alice
        (0, 1, 4, 5),  # Bob and Alice: each of their panels
        (),  # [NC]: neither gives nor takes
        (0,),
        (0, 1, 2, 4),
    ]
    assert cs.story_reference_table(tags, window=2) == [(4,), (), (1,), (), (0,), (4,)]
    assert cs.story_reference_table([["Bob"]] * 3) == cs.reference_table(3)
