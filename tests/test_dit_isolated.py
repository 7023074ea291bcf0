"""Object Isolated Attention on the tiny Flux.1 model through real sampling (core's KSampler).

The exactness tests read the attention calls the real blocks make, through an attention override
installed the way another pack would (the isolated branch's kernel chains to it)."""

import pytest
import torch

import isolated_helpers
from dit_helpers import ksample, tiny_dit
from isolated_helpers import encode_story, state_of
from pack_loader import submodule
from tiny_models import dit_factory

GRID = (4, 6)  # image tokens of an 8x12 latent (patch 2)
# the thin-evidence guards are for real models' maps; random tiny weights give noise maps
NO_GUARDS = {"min_area": 0.0, "min_separation": 0.0, "evidence_steps": 1}


def isolated(model, clip, story, **kw):
    return isolated_helpers.isolated(model, clip, story, **{**NO_GUARDS, **kw})


_CACHE: dict = {}


def flux_story():
    """Tiny Flux CLIP (real T5 tokenizer) and the two-character story: Bob | Alice | Bob and Alice."""
    if "clip" not in _CACHE:
        _CACHE["clip"] = dit_factory.tiny_flux_clip()
        _CACHE["story"] = encode_story(_CACHE["clip"])
    return _CACHE["clip"], *_CACHE["story"]


def halves():
    """User masks on the token grid: Bob the left three columns, Alice the right three."""
    left = torch.zeros(1, *GRID)
    left[..., : GRID[1] // 2] = 1
    return left, 1 - left


def run(model, steps=3, **kw):
    clip, pos, neg, story, n = flux_story()
    m = model if kw.get("strength", 1) is None else isolated(model, clip, story, **kw)
    return ksample(m, "flux", panels=n, positive=pos, negative=neg, steps=steps), m


class Probe:
    """Records every attention call of the blocks (q, k, v, mask, block), then runs the kernel."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):  # clone() deep-copies model_options: keep one recorder
        return self

    def install(self, model):
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = self
        return m

    def __call__(self, func, *args, **kwargs):
        topts = kwargs.get("transformer_options") or {}
        q, k, v = args[:3]
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        block = (topts.get("block_type"), topts.get("block_index"))
        iso = topts.get("storydiff_joint_isolated")
        self.calls.append((q.detach().clone(), k.detach().clone(), v.detach().clone(), mask, block, iso))
        return func(*args, **kwargs)


def test_strength_zero_and_steps_without_isolation_are_bit_identical():
    model = tiny_dit("flux")
    plain, _ = run(model, strength=None)
    zero, m0 = run(model, strength=0.0)
    assert m0 is model and torch.equal(zero, plain)
    # the window holds step 0 only: maps are captured (every double block reads its probabilities)
    # but no step isolates, so every attention call runs as the block made it
    capture_only, m = run(model, end_percent=0.2)
    assert state_of(m).run.result is not None and state_of(m).run.result.steps == 3
    assert torch.equal(capture_only, plain)
    isolating, _ = run(model)
    assert not torch.allclose(isolating, plain, atol=1e-4), "isolation changed nothing"


def test_online_masks_follow_the_story_tags():
    _, m = run(tiny_dit("flux"))
    result = state_of(m).run.result
    assert result.maps.shape == (3, 2, *GRID)
    area = result.masks.float().mean((-1, -2))  # [panel, character]: Bob | Alice
    assert area[0, 0] > 0 and area[0, 1] == 0 and area[1, 0] == 0 and area[1, 1] > 0
    assert area[2, 0] > 0 and area[2, 1] > 0
    assert not (result.masks[2, 0] & result.masks[2, 1]).any()


def isolated_calls(probe):
    """(panel, record) of the isolated-branch calls (one panel each; the blocks' own calls hold the
    whole batch of 3 panels x 2 guidance chunks), in loop order."""
    out, panel = [], 0
    for rec in probe.calls:
        if rec[0].shape[0] == 1:
            out.append((panel, rec))
            panel += 1
        else:
            panel = 0
    return out


def test_isolation_is_exact_on_real_block_calls():
    """No attention weight from A's region to B's references or B's prompt; A's region sees no
    text but A's own prompt; the regions land on the user masks' image tokens (row-major)."""
    bob, alice = halves()
    probe = Probe()
    run(probe.install(tiny_dit("flux")), mask_1=bob, mask_2=alice)
    calls = isolated_calls(probe)
    blocks = {rec[4] for _, rec in calls}
    assert ("double", 0) in blocks and ("single", 0) in blocks
    n = GRID[0] * GRID[1]
    region = {0: bob.flatten() > 0, 1: alice.flatten() > 0}
    checked = backgrounds = 0
    for panel, (q, k, _v, mask, _block, info) in calls:
        seg = info.segments
        L = q.shape[2]
        start = L - n
        probs = ((q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask.double()).softmax(
            -1
        )
        img = probs[0, :, start:]  # [H, n, L + R] image rows
        present = [c for c in (0, 1) if info.tokens[panel, c].any()]
        assert present == {0: [0], 1: [1], 2: [0, 1]}[panel]
        refs = k.shape[2] - L
        # references: panel 2 borrows Bob's left half of panel 0 then Alice's right half of panel 1
        assert refs == (n if panel == 2 else 0)
        for a in present:
            b = 1 - a
            rows = region[a]
            assert torch.equal(info.tokens[panel, a].cpu(), rows)  # the mask landed on these tokens
            w = img[:, rows]
            own = seg.of(a)
            assert w[..., : seg.prompt].abs().max() == 0  # the sampler's prompt: not seen
            assert w[..., seg.of(b)].abs().max() == 0  # B's prompt: not seen
            assert w[..., own].sum(-1).min() > 0  # A's own prompt: seen
            if refs:
                mine = slice(L, L + n // 2) if a == 0 else slice(L + n // 2, L + n)
                theirs = slice(L + n // 2, L + n) if a == 0 else slice(L, L + n // 2)
                assert w[..., theirs].abs().max() == 0  # no weight from A's region to B's references
                assert w[..., mine].sum(-1).min() > 0
            checked += 1
        background = ~(region[0] & info.tokens[panel, 0].cpu()) & ~(region[1] & info.tokens[panel, 1].cpu())
        if background.any():  # the background keeps the sampler's prompt and no reference
            w = img[:, background]
            assert w[..., seg.prompt : seg.text].abs().max() == 0 and w[..., L:].abs().sum() == 0
            assert w[..., : seg.prompt].sum(-1).min() > 0
            backgrounds += 1
    assert checked >= 4 * len(blocks) and backgrounds >= 2 * len(blocks)


def test_text_attention_in_a_region_is_the_characters_prompt_alone():
    """At the first double block, the keys/values A's region attends as text are those the block
    computes for A's prompt alone (T5 context of 'Name, description', nothing else), and A's text
    stream leaves the block as it would alone beside this image."""
    bob, alice = halves()
    probe, seen = Probe(), {}
    model = tiny_dit("flux")
    dm = model.get_model_object("diffusion_model")
    m = model.clone()

    def first_block(args, extra):
        info = args["transformer_options"].get("storydiff_joint_isolated")
        first = info is not None and info.segments is not None and "args" not in seen
        if first:  # copies: the block adds into its inputs in place
            seen["args"] = {key: val.clone() if torch.is_tensor(val) else val for key, val in args.items()}
        out = extra["original_block"](args)
        if first:
            seen["out"] = {key: val.clone() for key, val in out.items()}
        return out

    m.set_model_patch_replace(first_block, "dit", "double_block", 0)
    _, patched = run(probe.install(m), mask_1=bob, mask_2=alice)
    contexts = state_of(patched).config.characters
    args = seen["args"]
    info = args["transformer_options"]["storydiff_joint_isolated"]
    seg, chunks = info.segments, info.chunks
    rec = next(r for p, r in isolated_calls(probe) if r[4] == ("double", 0) and p == 2)
    row = chunks.index(0) * 3 + 2  # panel 2, cond chunk
    pe = args["pe"]
    assert torch.equal(pe[:, :, : seg.text], pe[:, :, :1].expand_as(pe[:, :, : seg.text]))  # text at 0
    for a in (0, 1):
        ctx = contexts[a].to(args["txt"].dtype)  # [1 or panels, T, C] (regional texts per panel)
        ctx = ctx[2:3] if ctx.shape[0] > 1 else ctx
        alone_pe = torch.cat([pe[:, :, : ctx.shape[1]], pe[:, :, seg.text :]], 2)
        got = {}

        def keep(func, *x, got=got, **kw):
            got["k"], got["v"] = x[1], x[2]
            return func(*x, **kw)

        _, txt_out = dm.double_blocks[0](
            img=args["img"][row : row + 1].clone(),  # the block adds into it in place
            txt=dm.txt_in(ctx),
            vec=args["vec"][row : row + 1],
            pe=alone_pe[row : row + 1] if alone_pe.shape[0] > 1 else alone_pe,
            attn_mask=None,
            transformer_options={"optimized_attention_override": keep},
        )
        span = seg.of(a)
        for got_t, iso_t in ((got["k"], rec[1]), (got["v"], rec[2])):
            alone = got_t[0, :, : ctx.shape[1]]
            err = float((iso_t[0, :, span] - alone.detach()).abs().max())
            assert err < 1e-5, (a, err)  # float32 rounding of different matmul shapes only
        # the segment's stream leaves the block as A's prompt alone would (it saw only itself + image)
        err = float((seen["out"]["txt"][row, span] - txt_out[0].detach()).abs().max())
        assert err < 1e-5, (a, "block output", err)


def test_masks_from_known_maps_land_on_their_image_tokens():
    """Maps injected in place of the captured ones (same shape: [panels, characters, grid]) give
    Otsu masks whose tokens are exactly the rows the isolated branch gives each character's prompt."""
    probe = Probe()
    clip, pos, neg, story, n = flux_story()
    m = isolated(probe.install(tiny_dit("flux")), clip, story)
    branch = state_of(m)
    known = torch.zeros(3, 2, *GRID)
    known[:, 0, :2, :2] = 1.0  # Bob: top-left 2x2
    known[:, 1, 2:, 3:] = 1.0  # Alice: bottom-right 2x3
    seen = []

    def add_maps(step, maps, grid):
        seen.append((tuple(maps.shape), tuple(grid)))
        type(branch.run).add_maps(branch.run, step, known, grid)

    branch.run.add_maps = add_maps
    ksample(m, "flux", panels=n, positive=pos, negative=neg, steps=3)
    assert seen and set(seen) == {((3, 2, *GRID), GRID)}
    expect = {c: known[0, c].flatten() > 0 for c in (0, 1)}
    calls = isolated_calls(probe)
    assert calls
    for panel, (q, _k, _v, mask, _block, info) in calls:
        seg, L = info.segments, q.shape[2]
        img_rows = mask[0, 0, L - GRID[0] * GRID[1] :, :L]
        for c in (0, 1):
            if panel in ({0: (0, 2), 1: (1, 2)}[c]):
                sees_own = (img_rows[:, seg.of(c)] == 0).all(-1).cpu()
                assert torch.equal(sees_own, expect[c]), (panel, c, sees_own.reshape(GRID))


class Foreign:
    def __init__(self):
        self.calls = {}

    def install(self, model):
        dm = model.get_model_object("diffusion_model")
        m = model.clone()
        for kind, count in (("double_block", len(dm.double_blocks)), ("single_block", len(dm.single_blocks))):
            for i in range(count):
                m.set_model_patch_replace(self.make((kind, i)), "dit", kind, i)
        return m

    def make(self, key):
        def replace(args, extra):
            self.calls[key] = self.calls.get(key, 0) + 1
            return extra["original_block"](args)

        return replace


def test_foreign_block_replace_before_and_after_runs_on_every_block_and_isolation_persists():
    model = tiny_dit("flux")
    alone, _ = run(model, steps=2)
    before, after = Foreign(), Foreign()
    out_before, _ = run(before.install(model), steps=2)
    clip, pos, neg, story, n = flux_story()
    m = after.install(isolated(model, clip, story))
    out_after = ksample(m, "flux", panels=n, positive=pos, negative=neg, steps=2)
    dm = model.get_model_object("diffusion_model")
    blocks = len(dm.double_blocks) + len(dm.single_blocks)
    for probe in (before, after):
        assert len(probe.calls) == blocks and len(set(probe.calls.values())) == 1
    assert torch.equal(out_before, alone) and torch.equal(out_after, alone)


@pytest.mark.parametrize("family", ["sd35", "chroma"])
def test_other_dit_families_get_the_family_error(family):
    clip, pos, neg, story, n = flux_story()
    node = submodule("nodes.isolated_attention").IsolatedAttention()
    with pytest.raises(submodule("nodes.common").StoryError, match="does not support"):
        node.patch(tiny_dit(family), clip, story, 1.1, 1.0, 0.0, 1.0)


def test_identity_bank_on_flux_is_a_clear_error():
    clip, pos, neg, story, n = flux_story()
    node = submodule("nodes.isolated_attention").IsolatedAttention()
    bank = submodule("attention.identity_bank").IdentityBank()
    with pytest.raises(submodule("nodes.common").StoryError, match="identity_bank"):
        node.patch(tiny_dit("flux"), clip, story, 1.1, 1.0, 0.0, 1.0, identity_bank=bank)


def test_a_positive_not_from_the_story_is_a_clear_error():
    clip, pos, neg, story, n = flux_story()
    m = isolated(tiny_dit("flux"), clip, story)
    other = dit_factory.conditioning("flux", n, tokens=16, seed=3)
    with pytest.raises(submodule("nodes.common").StoryError, match="Story Prompt's positive"):
        ksample(m, "flux", panels=n, positive=other, negative=other, steps=2)
    with pytest.raises(submodule("nodes.common").StoryError, match="batch has 2 images but the story has 3"):
        ksample(m, "flux", panels=2, steps=2)


def test_with_consistent_self_attention_in_either_order_both_take_effect():
    """CSA's override appends other panels' image tokens to the keys: the isolated branch keeps
    them visible to the image (as on UNets), hides them from the character segments, and still
    isolates and captures whichever feature is applied first."""
    from test_dit_sampling import ALWAYS, csa

    clip, pos, neg, story, n = flux_story()
    model = tiny_dit("flux")
    shared = ksample(csa(model, **ALWAYS), "flux", panels=n, positive=pos, negative=neg, steps=3)
    for m in (isolated(csa(model, **ALWAYS), clip, story), csa(isolated(model, clip, story), **ALWAYS)):
        out = ksample(m, "flux", panels=n, positive=pos, negative=neg, steps=3)
        assert not torch.allclose(out, shared, atol=1e-4), "isolation lost next to CSA"
        area = state_of(m).run.result.masks.float().mean((-1, -2))
        assert area[0, 0] > 0 and area[1, 1] > 0 and area[2].min() > 0


def test_the_thin_evidence_guards_apply_on_flux():
    """With the node's default guards, the tiny model's noise maps give no mask (Otsu separation
    below min_separation), so nothing is isolated and the output is the plain model's."""
    clip, pos, neg, story, n = flux_story()
    model = tiny_dit("flux")
    plain = ksample(model, "flux", panels=n, positive=pos, negative=neg, steps=3)
    m = isolated_helpers.isolated(model, clip, story)
    out = ksample(m, "flux", panels=n, positive=pos, negative=neg, steps=3)
    assert state_of(m).run.result.maps.shape == (3, 2, *GRID)
    assert not state_of(m).run.result.masks.any()
    assert torch.equal(out, plain)
