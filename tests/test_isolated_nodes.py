"""Isolated Attention and Story Attention Masks through real ComfyUI sampling on tiny models."""

import dataclasses

import pytest
import torch

from comfy.sample import sample as comfy_sample

import reference_attention as reference
from isolated_helpers import (
    NO_GUARD,
    encode_story,
    isolated,
    sample,
    state_of,
    with_attention_override,
)
from pack_loader import pure, submodule

iso_self = pure("attention.isolated_self")
branch_mod = submodule("attention.isolated_branch")
core = submodule("nodes.patch_core")
unet = submodule("families.unet")
patch_mod = submodule("nodes.patch_isolated")
StoryError = submodule("nodes.common").StoryError


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip, _ = tiny("sd15")
    positive, negative, story, panels = encode_story(clip)
    return model, clip, positive, negative, story, panels


def halves(panels=1, size=(16, 16)):
    """Bob = left half, Alice = right half."""
    left = torch.zeros(panels, *size)
    left[..., : size[1] // 2] = 1.0
    return left, 1.0 - left


# ---- parity -------------------------------------------------------------------------
def test_lambda_zero_and_inactive_branch_are_bit_identical(sd15):
    model, clip, pos, neg, story, P = sd15
    vanilla = sample(model.clone(), pos, neg, P, steps=3)
    assert isolated(model, clip, story, strength=0.0) is model  # λ = 0: the node does not patch
    # patched, maps captured every step, isolation window never reached: replaces must not change a bit
    idle = isolated(model, clip, story, start_percent=1.0, end_percent=1.0)
    assert torch.equal(sample(idle, pos, neg, P, steps=3), vanilla)
    assert state_of(idle).run.result.maps is not None  # it did capture
    active = isolated(model, clip, story, **NO_GUARD)
    assert not torch.equal(sample(active, pos, neg, P, steps=3), vanilla)


def test_capture_only_patch_is_bit_identical(sd15):
    model, clip, pos, neg, story, P = sd15
    plan = submodule("nodes.character_plan").build_plan("test", clip, story)
    state = branch_mod.IsolatedBranch(
        branch_mod.IsolatedConfig(isolate=False, capture="all blocks"),
        pure("attention.isolated_run").IsolatedRun(plan),
    )
    m = core.install(model, patch_mod.IsolatedPatch(state))
    assert torch.equal(sample(m, pos, neg, P, steps=3), sample(model.clone(), pos, neg, P, steps=3))
    assert state.run.result.maps.shape == (P, 2, 8, 8)


# ---- isolation exactness, measured on the real calls --------------------------------
def _record_replace(m, key):
    """Record the inputs and output of the isolated attn2 replace of one layer (wraps its hook)."""
    patch, seen = core.installed(m, "isolated"), []

    def recording(make):
        def made(previous):
            inner = make(previous)

            def rec(q, k, v, extra):
                out = inner(q, k, v, extra)
                seen.append((q, k, v, dict(extra), out))
                return out

            return rec

        return made

    patch.hooks = [
        dataclasses.replace(h, make=recording(h.make)) if (h.slot, h.key) == ("attn2", key) else h
        for h in patch.hooks
    ]
    return seen


@pytest.fixture(scope="module")
def exact_run(sd15):
    """One real sampling run with given masks, recording the isolated self-attention calls
    (through the attention function) and one attn2 replace call per step."""
    model, clip, pos, neg, story, P = sd15
    bob, alice = halves()
    calls = []

    def recorder(q, k, v, heads, mask):
        if mask is not None:
            calls.append((q, k, mask))

    # the kernel override of another pack reaches the isolated branch (its masked calls are seen)
    m = isolated(
        with_attention_override(model, recorder),
        clip,
        story,
        strength=1.0,
        reweight=2.0,
        mask_1=bob,
        mask_2=alice,
    )
    key = ("output", 3, 0)
    seen = _record_replace(m, key)
    sample(m, pos, neg, P, steps=3, size=(16, 16))
    module = {layer.key: layer.attn2 for layer in unet.attention_layers(m)}[key]
    return calls, seen, module, clip


def test_self_attention_never_reaches_the_other_characters_references(exact_run):
    calls = exact_run[0]
    assert calls, "the isolated self-attention must have run"
    for q, k, mask in calls:
        n = q.shape[1]
        side = int(round(n**0.5))
        cols = torch.arange(n) % side
        bob_rows, alice_rows = cols < side // 2, cols >= side // 2
        n_ref = (
            k.shape[1] - n
        )  # only panel 3 (Bob and Alice) has references: Bob's (panel 1) then Alice's (panel 2)
        assert n_ref == n  # half of panel 1's tokens + half of panel 2's tokens
        heads = 8
        w = reference.attention_weights(q, k, heads, mask)[0]  # [heads, n, n + refs]
        bob_refs, alice_refs = slice(n, n + n // 2), slice(n + n // 2, n + n_ref)
        assert torch.all(w[:, bob_rows][:, :, alice_refs] == 0)
        assert torch.all(w[:, alice_rows][:, :, bob_refs] == 0)
        assert torch.all(w[:, bob_rows][:, :, bob_refs] > 0) and torch.all(
            w[:, alice_rows][:, :, alice_refs] > 0
        )


# Which text reaches Bob's region (issue 10, finding 9): his description *and* the panel's own action,
# the other characters' tags removed, so that λ = 1.1 does not push the action out of the character.
BOB = "Bob, a man with short black hair, red jacket"
BOB_REGION = {0: f"{BOB} waits at a bus stop", 2: f"{BOB} and walk in a park"}


def test_cross_attention_inside_a_region_is_that_characters_prompt_alone(sd15, exact_run):
    P = sd15[-1]
    _, seen, module, clip = exact_run
    contexts = {
        p: clip.encode_from_tokens(clip.tokenize(t), return_dict=True)["cond"] for p, t in BOB_REGION.items()
    }
    checked = 0
    for q, k, v, extra, out in seen[1:]:  # from step 1 on (masks exist)
        h, w = extra["activations_shape"][-2:]
        cols = torch.arange(h * w) % w
        bob_rows = cols < w // 2
        for c, label in enumerate(extra["cond_or_uncond"]):
            for panel in (0, 2):  # Bob is in panels 1 and 3
                ctx_bob = contexts[panel]
                r = c * P + panel
                alone = iso_self.sdpa_attention(q[r : r + 1], module.to_k(ctx_bob), module.to_v(ctx_bob), 8)[
                    0
                ]
                plain = iso_self.sdpa_attention(q[r : r + 1], k[r : r + 1], v[r : r + 1], 8)[0]
                if label == 0:
                    assert torch.allclose(out[r][bob_rows], alone[bob_rows], atol=1e-5)
                    checked += 1
                else:  # uncond rows untouched
                    assert torch.allclose(out[r], plain, atol=1e-5)
                    assert not torch.allclose(out[r][bob_rows], alone[bob_rows], atol=1e-3)
    assert checked >= 4


def test_wraps_an_existing_attn2_replace_and_keeps_its_contribution(sd15):
    model, clip, pos, neg, story, P = sd15
    base = model.clone()
    calls = {"n": 0}
    extra_k = torch.randn(1, 4, 320, generator=torch.Generator().manual_seed(0))

    def ip_like(q, k, v, extra):  # text attention + an image-prompt-like term on every row
        calls["n"] += 1
        text = iso_self.sdpa_attention(q, k, v, extra["n_heads"])
        kk = extra_k[..., : q.shape[-1]].expand(q.shape[0], -1, -1)
        return text + 0.5 * iso_self.sdpa_attention(q, kk, kk, extra["n_heads"])

    keys = [layer.key for layer in unet.attention_layers(base, ("output",))]
    for key in keys:
        base.set_model_attn2_replace(ip_like, *key)
    bob, alice = halves()
    m = isolated(base, clip, story, strength=1.0, mask_1=bob, mask_2=alice)
    seen = _record_replace(m, ("output", 3, 0))
    sample(m, pos, neg, P, steps=3, size=(16, 16))
    assert calls["n"] >= 3 * len(keys)
    for q, k, v, extra, out in seen[1:]:
        prev = ip_like(q, k, v, extra)
        w = extra["activations_shape"][-1]
        right = (torch.arange(q.shape[1]) % w) >= w // 2
        for c, label in enumerate(extra["cond_or_uncond"]):
            rows = slice(c * P, (c + 1) * P)
            if label == 1:
                assert torch.equal(out[rows], prev[rows])
            else:  # panel 1 has only Bob: its right half is background and keeps the wrapped output
                assert torch.allclose(out[c * P][right], prev[c * P][right], atol=1e-5)
                # Bob's region there attends to the panel's whole line (nobody else to isolate from)
                assert torch.allclose(out[c * P][~right], prev[c * P][~right], atol=1e-5)
                # panel 3 (Bob and Alice): Bob's region no longer sees Alice's description, so it changes
                assert not torch.allclose(out[c * P + 2][~right], prev[c * P + 2][~right], atol=1e-4)


# ---- online masks -------------------------------------------------------------------
def _name_columns(clip, text, name):
    """Context positions of `name`'s tokens in `text`, found here by plain search (not by the pack)."""
    toks = [
        (t, w)
        for window in clip.tokenize(text, return_word_ids=True)["l"]
        for t, w in ((x[0], x[2]) for x in window)
    ]
    ids = [t for t, w in ((x[0], x[2]) for x in clip.tokenize(name, return_word_ids=True)["l"][0]) if w]
    return [
        i + j
        for i in range(len(toks))
        if [t for t, _ in toks[i : i + len(ids)]] == ids
        for j in range(len(ids))
    ]


def test_online_masks_localise_where_injected_attention_puts_each_character(sd15, monkeypatch):
    """Known cross-attention maps are injected into the captured probabilities of a real run: each
    character's name tokens light up one region, the token right after the name (off by one) and
    the description's tokens light up decoy regions. The masks must land on each name's region."""
    model, clip, pos, neg, story, P = sd15
    side = 32  # latent; the captured layers are 8x8
    columns = [
        {name: _name_columns(clip, text, name) for name in tags}
        for text, tags in zip(story.encoded_prompts, story.tags, strict=True)
    ]
    regions = {"Bob": (slice(None), slice(0, 4)), "Alice": (slice(None), slice(4, 8))}
    decoy = (slice(0, 3), slice(None))  # top rows: what a wrong column would see

    def injected(q, k, heads):
        b, n, T = q.shape[0], q.shape[1], k.shape[1]
        h = w = int(round(n**0.5))
        probs = torch.full((b, h, w, T), 0.01)
        for r in range(b):
            for name, cols in columns[r % P].items():
                probs[r, :, :, cols] = 0.02
                probs[(r,) + regions[name] + (cols,)] = 1.0
                after = max(cols) + 1
                probs[r, :, :, after : after + 8] = 0.02  # the token after the name and the description
                probs[(r,) + decoy + (slice(after, after + 8),)] = 1.0
        return probs.reshape(b, n, T)

    monkeypatch.setattr(submodule("attention.cross_maps"), "head_mean_probs", injected)
    node = submodule("nodes.attention_masks").StoryAttentionMasks()
    _, masks, _ = node.sample(
        model,
        clip,
        story,
        pos,
        neg,
        {"samples": torch.zeros(P, 4, side, side)},
        seed=0,
        steps=3,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        layers="up, lowest resolution",
        start_percent=0.0,
        end_percent=1.0,
        blur=0.0,
        dilate=0,
        min_area=0.0,
    )
    masks = masks.reshape(P, 2, side * 8, side * 8) > 0.5
    iou = pure("attention.isolated_run").mask_iou
    for p, tags in enumerate(story.tags):
        for c, name in enumerate(story.characters):
            if name not in tags:
                assert not masks[p, c].any(), (p, name)
                continue
            want = torch.zeros(8, 8, dtype=torch.bool)
            want[regions[name]] = True
            want = want.repeat_interleave(side, 0).repeat_interleave(side, 1)
            assert iou(masks[p, c], want) > 0.8, (p, name, iou(masks[p, c], want))


def test_online_masks_are_stable_over_the_run(sd15, capsys):
    model, clip, pos, neg, story, P = sd15
    m = isolated(model, clip, story, **NO_GUARD)
    sample(m, pos, neg, P, steps=8, size=(16, 16))
    result = state_of(m).run.result
    iou = pure("attention.isolated_run").mask_iou(result.masks_at_70, result.masks)
    with capsys.disabled():
        print(f"\n[OIA] mask IoU between 70% and 100% of 8 steps (tiny SD1.5, 2 characters): {iou:.3f}")
    assert iou > 0.5


def test_identity_bank_references_are_used_by_contract(sd15):
    model, clip, pos, neg, story, P = sd15

    widths = {layer.key: layer.attn1.to_k.in_features for layer in unet.attention_layers(model)}

    class Bank:  # a stand-in with only the IDENTITY_BANK contract
        characters = ["Bob"]

        def __init__(self):
            self.asked = []

        def tokens(self, character, sigma, layer):
            self.asked.append((character, sigma, layer))
            return torch.randn(5, widths[layer], generator=torch.Generator().manual_seed(1)).half()

    bank = Bank()
    calls = []

    def recorder(q, k, v, heads, mask):
        if mask is not None:
            calls.append((q.shape[1], k.shape[1]))

    bob, alice = halves()
    m = isolated(
        with_attention_override(model, recorder), clip, story, identity_bank=bank, mask_1=bob, mask_2=alice
    )
    # Bob now has references in panel 1 too (from the bank), not only in panel 3
    sample(m, pos, neg, P, steps=3, size=(16, 16))
    assert bank.asked and all(
        c == "Bob" and isinstance(s, float) and ly[0] == "output" and len(ly) == 3 for c, s, ly in bank.asked
    )
    assert any(kn == n + 5 for n, kn in calls)  # panel 1: own tokens + 5 bank tokens
    assert any(kn == n + 5 + n // 2 for n, kn in calls)  # panel 3: + Alice's half of panel 2


def test_three_characters_in_a_panel_and_panels_without_any(tiny):
    model, clip, _ = tiny("sd15")
    text = (
        "[Bob]: a man in red\n[Alice]: a woman in green\n[Carl]: a boy in blue\n"
        "[Bob], [Alice] and [Carl] at a table\n[NC] an empty kitchen\n[Carl] runs outside"
    )
    pos, neg, story, P = encode_story(clip, text)
    m = isolated(model, clip, story, **NO_GUARD)
    sample(m, pos, neg, P, steps=4, size=(16, 16))
    masks = state_of(m).run.result.masks
    assert masks.shape == (3, 3, 16, 16)
    assert masks[0].any(0).any() and not masks[1].any() and not masks[2, :2].any()
    assert (masks[0].sum(0) <= 1).all()


def test_odd_latent_size(sd15):
    model, clip, pos, neg, story, P = sd15
    m = isolated(model, clip, story)
    out = sample(m, pos, neg, P, steps=3, size=(10, 14))
    assert out.shape == (P, 4, 10, 14) and torch.isfinite(out).all()
    assert state_of(m).run.result.masks.shape[-2:] == (10, 14)


# ---- bad inputs ---------------------------------------------------------------------
def test_mask_batch_must_be_one_or_the_panel_count(sd15):
    model, clip, pos, neg, story, P = sd15
    with pytest.raises(StoryError, match="mask_2.*batch of 2.*3 panels"):
        isolated(model, clip, story, mask_2=torch.ones(2, 16, 16))


def test_user_mask_of_another_aspect_ratio_is_refused_before_sampling(sd15):
    model, clip, pos, neg, story, P = sd15
    steps = []
    m = isolated(model, clip, story, mask_1=torch.ones(24, 40))  # 40x24 px for a 64x64 image
    with pytest.raises(StoryError, match=r"mask_1 is 40×24 px.*image is 64×64.*aspect ratio"):
        latent = torch.zeros(P, 4, 8, 8)
        comfy_sample(
            m,
            torch.zeros_like(latent),
            2,
            5.0,
            "euler",
            "normal",
            pos,
            neg,
            latent,
            callback=lambda *a: steps.append(a[0]),
        )
    assert steps == []  # refused before the first step
    # the same aspect at another size is fine (scaled, not stretched), and so is a rounding pixel
    for mask in (torch.ones(P, 128, 128), torch.ones(63, 64)):
        assert torch.isfinite(sample(isolated(model, clip, story, mask_1=mask), pos, neg, P, steps=2)).all()


def test_tag_without_description_and_tokens_not_found(sd15):
    model, clip, *_ = sd15
    syntax = pure("story.syntax")
    story = syntax.Story(
        characters={"Bob": "a man"}, panels=[syntax.Panel(0, 1, "Eve, a woman", ("Eve",), "", False)]
    )
    with pytest.raises(StoryError, match=r"\[Eve\].*no description"):
        isolated(model, clip, story)
    story = syntax.Story(
        characters={"Bob": "a man with a hat"},
        panels=[syntax.Panel(0, 1, "an empty street", ("Bob",), "", False)],
    )
    with pytest.raises(StoryError, match=r"\[Bob\].*not found|\[Bob\].*neither"):
        isolated(model, clip, story)


def test_latent_batch_must_match_the_panels(sd15):
    model, clip, pos, neg, story, P = sd15
    m = isolated(model, clip, story)
    with pytest.raises(StoryError, match="latent batch has 2 images but the story has 3 panels"):
        sample(m, pos, neg, 2, steps=2)


# ---- the masks node -----------------------------------------------------------------
def test_story_attention_masks_node(sd15):
    model, clip, pos, neg, story, P = sd15
    node = submodule("nodes.attention_masks").StoryAttentionMasks()
    latent = {"samples": torch.zeros(P, 4, 16, 16)}
    args = dict(
        seed=0,
        steps=3,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        layers="up, lowest resolution",
        start_percent=0.0,
        end_percent=1.0,
        blur=0.5,
        dilate=0,
        min_area=0.0,
    )
    out, masks, preview = node.sample(model, clip, story, pos, neg, latent, **args)
    assert out["samples"].shape == (P, 4, 16, 16)
    assert masks.shape == (P * 2, 128, 128)
    # the preview carries a legend band under each panel unless it is turned off
    assert preview.shape[0] == P and preview.shape[1] > 128 and preview.shape[2:] == (128, 3)
    _, _, bare = node.sample(model, clip, story, pos, neg, latent, legend=False, **args)
    assert bare.shape == (P, 128, 128, 3) and torch.equal(bare, preview[:, :128])
    assert masks[0].any() and not masks[1].any() and masks[3].any() and not masks[2].any()
    # on an Isolated Attention model it reads that node's own masks from the same run
    m = isolated(model, clip, story)
    _, masks2, _ = node.sample(m, clip, story, pos, neg, latent, **args)
    assert masks2.shape == masks.shape and masks2[0].any()
    with pytest.raises(StoryError, match="latent_image has 2 images"):
        node.sample(model, clip, story, pos, neg, {"samples": torch.zeros(2, 4, 8, 8)}, **args)


# ---- thin evidence (issue 10, finding 8) -------------------------------------------------
def _inject(monkeypatch, make):
    """Replace the captured cross-attention probabilities (both capture paths) by make(b, n, T)."""
    branch_mod = submodule("attention.isolated_branch")

    def mean_probs(q, k, heads):
        return make(q.shape[0], q.shape[1], k.shape[1])

    def per_head(q, k, heads):
        return make(q.shape[0], q.shape[1], k.shape[1])[:, None].expand(-1, heads, -1, -1)

    monkeypatch.setattr(submodule("attention.cross_maps"), "head_mean_probs", mean_probs)
    monkeypatch.setattr(branch_mod, "head_probs", per_head)


def test_noise_maps_do_not_isolate(sd15, monkeypatch):
    """Cross-attention maps that are pure noise: Otsu still finds a 'region' in each, but the default
    guard (min_separation) leaves the model untouched, bit for bit."""
    model, clip, pos, neg, story, P = sd15
    gen = torch.Generator().manual_seed(3)
    _inject(monkeypatch, lambda b, n, T: torch.rand(b, n, T, generator=gen).softmax(-1))
    vanilla = sample(model.clone(), pos, neg, P, steps=4, size=(16, 16))
    m = isolated(model, clip, story)
    assert torch.equal(sample(m, pos, neg, P, steps=4, size=(16, 16)), vanilla)


def test_clear_maps_isolate_once_two_steps_agree(sd15, monkeypatch):
    """Maps with a clear region per character: masks from the second step's end on (two steps of
    evidence by default), and none from the first step's map alone."""
    model, clip, pos, neg, story, P = sd15
    plan = submodule("nodes.character_plan").build_plan("test", clip, story)

    def blobs(b, n, T):
        side = int(round(n**0.5))
        probs = torch.full((b, side, side, T), 0.01)
        for r in range(b):
            for c, cols in enumerate(plan.positions[r % P]):
                if cols:
                    probs[r, :, c * side // 2 : (c + 1) * side // 2, cols] = 1.0
        return probs.reshape(b, n, T)

    _inject(monkeypatch, blobs)
    m = isolated(model, clip, story)
    run = state_of(m).run
    masks, seen = run.masks, {}

    def spy(step, grid=None, device=None):
        out = masks(step, grid, device)
        seen[step] = out is not None and bool(out.any())
        return out

    run.masks = spy
    sample(m, pos, neg, P, steps=4, size=(16, 16))
    assert seen.get(1) is False and seen[2] is True and seen[3] is True, seen


# ---- other positive conds beside the story's (issue 10, finding 5) ------------------------
def _step0_maps(model, clip, story, pos, neg, P):
    """The maps the isolation run records at step 0 (same noise: identical whatever else samples)."""
    m = isolated(model, clip, story, **NO_GUARD)
    run = state_of(m).run
    add, seen = run.add_maps, []

    def spy(step, maps, grid):
        if step == 0:
            seen.append((tuple(grid), maps.detach().clone()))
        return add(step, maps, grid)

    run.add_maps = spy
    sample(m, pos, neg, P, steps=2, size=(16, 16))
    return seen


@pytest.mark.parametrize("extra", ["area", "full"])
def test_only_the_storys_own_cond_rows_feed_the_isolation(sd15, extra):
    """An area-restricted cond (ConditioningSetArea) or a second full-frame cond combined with the
    story's positive: the isolation reads only the story's own rows, at their own grid."""
    import nodes as comfy_nodes

    model, clip, pos, neg, story, P = sd15
    other = comfy_nodes.CLIPTextEncode().encode(clip, "a red balloon in the sky")[0]
    other = [[other[0][0].repeat(P, 1, 1), dict(other[0][1])]]
    if extra == "area":
        other = comfy_nodes.ConditioningSetArea().append(other, 64, 64, 0, 0, 1.0)[0]
    combined = comfy_nodes.ConditioningCombine().combine(pos, other)[0]
    alone = _step0_maps(model, clip, story, pos, neg, P)
    both = _step0_maps(model, clip, story, combined, neg, P)
    assert [g for g, _ in both] == [g for g, _ in alone]  # no crop-sized call, no extra rows
    assert all(torch.allclose(a, b, atol=1e-6) for (_, a), (_, b) in zip(alone, both, strict=True))
