"""Pure math of Object Isolated Attention (attention/ only, no ComfyUI)."""

import pytest
import torch
from skimage.filters import threshold_otsu

import reference_attention as reference
from pack_loader import pure

cross_maps = pure("attention.cross_maps")
otsu = pure("attention.otsu")
iso_self = pure("attention.isolated_self")
iso_cross = pure("attention.isolated_cross")
branch = pure("attention.isolated_merge")
run_mod = pure("attention.isolated_run")


# ---- Otsu ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_otsu_matches_scikit_image_on_random_maps(seed):
    g = torch.Generator().manual_seed(seed)
    kind = seed % 3
    if kind == 0:
        x = torch.rand(32, 48, generator=g, dtype=torch.float64)
    elif kind == 1:  # bimodal, like an attention blob
        x = torch.randn(40, 40, generator=g, dtype=torch.float64) * 0.1
        x[10:25, 5:20] += 1.0
    else:  # heavy tail
        x = torch.randn(17, 23, generator=g, dtype=torch.float64).exp()
    ours = otsu.otsu_threshold(x)
    ref = threshold_otsu(x.numpy())
    assert abs(float(ours) - float(ref)) <= 1e-9 * max(1.0, abs(float(ref)))
    assert torch.equal(x > ours, torch.from_numpy(x.numpy() > ref))


def test_flat_map_gives_empty_mask_not_error():
    assert otsu.otsu_threshold(torch.full((5, 5), 0.3)) is None
    assert not otsu.binarize(torch.full((6, 7), 2.0)).any()
    assert not otsu.binarize(torch.zeros(6, 7)).any()
    masks = otsu.panel_masks(torch.zeros(2, 4, 4))
    assert masks.shape == (2, 4, 4) and not masks.any()


def test_binarize_finds_the_blob():
    m = torch.zeros(16, 16)
    m[4:9, 2:8] = 1.0
    m += 0.001 * torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    mask = otsu.binarize(m)
    assert mask[4:9, 2:8].all() and mask.sum() == 30


# ---- CV overlap rule ----------------------------------------------------------------
def _blob(y0, y1, x0, x1, noise, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(20, 20)
    m[y0:y1, x0:x1] = 1.0 + noise * torch.rand(y1 - y0, x1 - x0, generator=g)
    return m


def test_overlap_goes_to_the_lower_coefficient_of_variation():
    clean = _blob(2, 12, 2, 12, 0.05, 0)  # low CV inside its mask
    noisy = _blob(6, 16, 6, 16, 3.0, 1)  # high CV inside its mask
    maps = torch.stack([noisy, clean])
    masks = torch.stack([otsu.binarize(noisy), otsu.binarize(clean)])
    overlap = masks[0] & masks[1]
    assert overlap.any(), "the constructed maps must overlap"
    cv = [otsu.coefficient_of_variation(maps[k], masks[k]) for k in range(2)]
    assert cv[1] < cv[0]
    out = otsu.resolve_overlaps(maps, masks)
    assert not (out[0] & out[1]).any()
    assert out[1][overlap].all() and not out[0][overlap].any()
    assert torch.equal(out[0] | out[1], masks[0] | masks[1])  # nothing lost, only reassigned
    # swapping the roles swaps the winner: the rule follows CV, not the index
    out_swapped = otsu.resolve_overlaps(maps.flip(0), masks.flip(0))
    assert out_swapped[0][overlap].all()


def test_three_characters_are_disjoint_and_absent_ones_empty():
    maps = torch.stack(
        [_blob(0, 10, 0, 10, 0.5, 0), _blob(5, 15, 5, 15, 0.2, 1), _blob(8, 20, 0, 20, 1.0, 2)]
    )
    masks = otsu.panel_masks(maps, present=[True, True, False])
    assert masks[0].any() and masks[1].any() and not masks[2].any()
    assert not (masks[0] & masks[1]).any()


def test_min_area_and_dilate():
    maps = torch.stack([_blob(0, 2, 0, 2, 0.0, 0), _blob(5, 15, 5, 15, 0.0, 1)])
    masks = otsu.panel_masks(maps, min_area=0.05)
    assert not masks[0].any() and masks[1].sum() == 100
    grown = otsu.panel_masks(maps[1:], dilate_radius=1)
    assert grown[0].sum() == 144


def test_masks_resize_to_odd_block_sizes():
    # 10x14 latent -> blocks 5x7, 3x4, 2x2 (sizes round up): left half stays left, top stays top
    mask = torch.zeros(1, 10, 14, dtype=torch.bool)
    mask[:, :, :7] = True
    for hw in ((10, 14), (5, 7), (3, 4), (2, 2)):
        tok = otsu.masks_to_tokens(mask, hw)
        assert tok.shape == (1, hw[0] * hw[1]) and tok.dtype == torch.bool
        grid = tok.view(hw)
        assert grid[:, 0].all() and not grid[:, -1].any()
    top = torch.zeros(10, 14, dtype=torch.bool)
    top[:5] = True
    grid = otsu.masks_to_tokens(top, (3, 4)).view(3, 4)
    assert grid[0].all() and not grid[-1].any()


# ---- token columns, maps ------------------------------------------------------------
def test_find_phrase_skips_specials_and_crosses_windows():
    bos, eos = 49406, 49407
    w1 = [(bos, 0)] + [(5, 1)] * 74 + [(7, 1), (eos, 0)]
    w2 = [(bos, 0), (8, 1), (9, 1)] + [(eos, 0)] * 74
    prompt = w1 + w2
    assert cross_maps.find_phrase(prompt, [7, 8]) == [75, 78]  # straddles the window boundary
    assert cross_maps.find_phrase(prompt, [9]) == [79]
    assert cross_maps.find_phrase(prompt, [42]) == []


def test_selection_matrix_folds_lcm_tiling_and_long_prompts():
    g = torch.Generator().manual_seed(0)
    # panel 0: 77 tokens, panel 1: 154 tokens (long prompt); batch tiled to 154, negative 231 -> LCM 462
    T = 462
    positions = [[[3, 4], []], [[90], [100, 101, 102]]]
    sel = cross_maps.selection_matrix(positions, [77, 154], T)
    probs = torch.rand(2, 5, T, generator=g).softmax(-1)
    maps = probs @ sel
    # panel 0, character 0 = mean over sub-tokens of the summed tiled copies
    want = sum(probs[0, :, j + r * 77] for j in (3, 4) for r in range(6)) / 2
    assert torch.allclose(maps[0, :, 0], want)
    want = sum(probs[1, :, j + r * 154] for j in (100, 101, 102) for r in range(3)) / 3
    assert torch.allclose(maps[1, :, 1], want)
    assert torch.equal(maps[0, :, 1], torch.zeros(5))
    with pytest.raises(ValueError):
        cross_maps.selection_matrix(positions, [77, 154], 200)


def test_tiled_context_gives_the_same_maps_as_the_untiled_one():
    g = torch.Generator().manual_seed(1)
    heads, d = 4, 8
    q = torch.randn(1, 12, heads * d, generator=g)
    k = torch.randn(1, 77, heads * d, generator=g)
    sel1 = cross_maps.selection_matrix([[[5, 6]]], [77], 77)
    sel3 = cross_maps.selection_matrix([[[5, 6]]], [77], 231)
    m1 = cross_maps.character_maps(q, k, heads, sel1, (3, 4))
    m3 = cross_maps.character_maps(q, k.repeat(1, 3, 1), heads, sel3, (3, 4))
    assert m1.shape == (1, 1, 3, 4) and torch.allclose(m1, m3, atol=1e-6)


def test_accumulator_averages_layers_then_steps_on_one_grid():
    acc = cross_maps.MapAccumulator((4, 6))
    acc.add(0, torch.ones(1, 1, 2, 3))
    acc.add(0, 3 * torch.ones(1, 1, 4, 6))
    acc.add(1, 10 * torch.ones(1, 1, 2, 3))
    assert acc.mean(before_step=1).shape == (1, 1, 4, 6)
    assert torch.allclose(acc.mean(before_step=1), torch.full((1, 1, 4, 6), 2.0))
    assert torch.allclose(acc.mean(), torch.full((1, 1, 4, 6), 6.0))
    assert acc.mean(before_step=0) is None


def test_step_index_from_sigmas():
    steps = pure("attention.steps")
    sched = [14.6, 7.0, 3.0, 1.0, 0.0]
    assert steps.step_index(14.6, sched) == 0
    assert steps.step_index(3.0, sched) == 2
    assert (
        steps.step_index(2.0, sched) == 2
    )  # DPM-2's midpoint (between two sigmas) belongs to the earlier step
    assert (
        steps.step_index(1.0, sched) == 3
    )  # Heun's 2nd call of step 2 lands on sigma[3]: it is step 3's call
    assert run_mod.first_appearances([[True, False], [False, False], [True, True]]) == [0, 2]


# ---- isolated self-attention --------------------------------------------------------
def test_isolation_bias_blocks_other_characters_references_exactly():
    region = torch.tensor(
        [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool
    )  # A: 0-1, B: 2-3, bg: 4-5
    owner = torch.tensor([0, 0, 0, 1, 1])
    act = torch.tensor([0.0, 0.5, 1.0, 1.0, 0.2])
    bias = iso_self.isolation_bias(region, owner, own_cols=6, activation=act, gamma=2.0)
    g = torch.Generator().manual_seed(0)
    heads, d = 2, 4
    q = torch.randn(1, 6, heads * d, generator=g)
    k = torch.randn(1, 11, heads * d, generator=g)
    w = reference.attention_weights(q, k, heads, bias[None])[0]  # [heads, 6, 11]
    assert torch.all(w[:, 0:2, 9:11] == 0)  # A's rows never see B's refs
    assert torch.all(w[:, 2:4, 6:9] == 0)  # B's rows never see A's refs
    assert torch.all(w[:, 4:6, 6:11] == 0)  # background: own image only
    assert torch.all(w[:, 0:2, 6:9] > 0) and torch.all(w[:, 2:4, 9:11] > 0)
    assert torch.allclose(bias[0, 6:9], torch.log1p(2.0 * act[:3]))
    v = torch.randn(1, 11, heads * d, generator=g)
    out = iso_self.isolated_self_attention(
        q, k[:, :6], v[:, :6], k[0, 6:], v[0, 6:], owner, region, heads, activation=act, gamma=2.0
    )
    ref = (w @ v.view(11, heads, d).transpose(0, 1)).transpose(0, 1).reshape(1, 6, heads * d)
    assert torch.allclose(out, ref, atol=1e-5)


def test_reweighting_amplifies_reference_attention():
    region = torch.ones(1, 4, dtype=torch.bool)
    owner = torch.zeros(3, dtype=torch.long)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 4, 8, generator=g), torch.randn(1, 7, 8, generator=g)
    plain = reference.attention_weights(q, k, 1, iso_self.isolation_bias(region, owner, 4, gamma=0.0)[None])
    boosted = reference.attention_weights(q, k, 1, iso_self.isolation_bias(region, owner, 4, gamma=3.0)[None])
    assert torch.all(boosted[..., 4:].sum(-1) > plain[..., 4:].sum(-1))


# ---- isolated cross-attention and merge ---------------------------------------------
def test_isolated_cross_attention_is_each_characters_prompt_inside_its_region():
    g = torch.Generator().manual_seed(0)
    heads, d, N = 2, 8, 6
    q = torch.randn(1, N, heads * d, generator=g)
    scene = (torch.randn(1, 77, heads * d, generator=g), torch.randn(1, 77, heads * d, generator=g))
    chars = [
        (torch.randn(1, 77, heads * d, generator=g), torch.randn(1, 77, heads * d, generator=g))
        for _ in range(3)
    ]
    masks = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]], dtype=torch.float32)
    attn = iso_self.sdpa_attention
    out = iso_cross.regional_blend(
        attn(q, *scene, heads), torch.stack([attn(q, *kv, heads) for kv in chars]), masks[:, None]
    )  # [K, panels=1, N]
    for c, cols in enumerate(([0, 1], [2], [3])):
        alone = iso_self.sdpa_attention(q, *chars[c], heads)
        assert torch.allclose(out[0, cols], alone[0, cols], atol=1e-5)
    assert torch.allclose(out[0, 4:], iso_self.sdpa_attention(q, *scene, heads)[0, 4:], atol=1e-6)


def test_isolated_merge():
    iso, orig = torch.full((2,), 3.0), torch.full((2,), 1.0)
    assert torch.allclose(branch.merge(iso, orig, 1.1), torch.full((2,), 3.2))
    assert torch.equal(branch.merge(iso, orig, 0.0), orig)
    assert branch.DEFAULT_LAMBDA == 1.1
    assert branch.is_isolation_block(("output", 3)) and not branch.is_isolation_block(("middle", 0))


def test_run_masks_use_only_the_steps_so_far():
    plan = run_mod.CharacterPlan(
        names=["A", "B"], present=[[True, True]], positions=[[[1], [2]]], lengths=[77]
    )
    run = run_mod.IsolatedRun(plan)
    run.schedule = [3.0, 2.0, 1.0, 0.0]
    a = torch.zeros(1, 2, 8, 8)
    a[0, 0, :, :4] = 1.0
    a[0, 1, :, 4:] = 1.0
    run.add_maps(0, a, (8, 8))
    run.add_maps(1, a.flip(-1), (8, 8))  # later step swaps the layout
    assert run.masks(0) is None
    m1 = run.masks(1)
    assert m1[0, 0, :, :4].all() and not m1[0, 0, :, 4:].any()
    assert not (m1[0, 0] & m1[0, 1]).any()
    run.release()
    assert run.result.steps == 3 and run.acc is None


def test_attention_from_captured_probabilities_matches_sdpa():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, n, 24, generator=g) for n in (6, 154, 154))
    out = cross_maps.attend(cross_maps.head_probs(q, k, 3), v)
    assert torch.allclose(out, iso_self.sdpa_attention(q, k, v, 3), atol=1e-5)
    assert torch.allclose(cross_maps.head_probs(q, k, 3).sum(-1), torch.ones(2, 3, 6))


def test_separation_guard_drops_noise_maps_and_keeps_a_blob():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, 16, generator=g)
    blob = torch.zeros(16, 16)
    blob[4:10, 3:9] = 1.0
    blob = blob + 0.1 * torch.rand(16, 16, generator=g)
    assert otsu.otsu_separation(noise) < 0.7 < otsu.otsu_separation(blob)
    assert otsu.otsu_separation(torch.ones(4, 4)) == 0.0
    maps = torch.stack([blob, noise])
    unguarded = otsu.panel_masks(maps, [True, True])
    assert unguarded[1].any()  # Otsu alone finds a "region" in the noise
    guarded = otsu.panel_masks(maps, [True, True], min_separation=0.7)
    assert guarded[0].any() and not guarded[1].any()
    assert torch.equal(guarded[0], otsu.panel_masks(blob[None], [True])[0])
