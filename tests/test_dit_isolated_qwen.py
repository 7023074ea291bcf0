"""Object Isolated Attention on the tiny Qwen-Image model through real sampling (core's KSampler).

Text: Qwen-Image's own text encoder class with the real Qwen2 tokenizer and chat template (the
context starts at the user's text, as the host drops the template's prefix) and a thin random
Qwen2.5 decoder (`dit_factory.tiny_qwen_image_clip`), so token positions, context lengths and the
regional prompts are those a real checkpoint gets; only the feature values are random.

The story's panel prompts tokenize to different lengths (18, 23 and 28 tokens): the Story Prompt
zero-pads them to the longest with a text attention mask (nodes/text_batching.py), which a host
that passes the mask (ComfyUI 0.33.0) applies in every block; the plan takes each panel's real
length and isolation keeps every row from its panel's padding. The regional prompts keep their
own lengths too (Bob's are 18, 13 and 20 tokens), so the segments' padding is exercised.
"""

import pytest
import torch

import isolated_helpers
from dit_helpers import ksample, tiny_dit
from isolated_helpers import encode_story, state_of
from pack_loader import submodule
from test_dit_isolated import GRID, NO_GUARDS, Foreign, Probe, halves, isolated_calls
from tiny_models import dit_factory

STORY = """[Bob]: a man with short black hair
[Alice]: a woman with long silver hair
[Bob] waits at a bus stop
[Alice] reads a book in a library on a rainy day
[Bob] and [Alice] walk in a park at dusk"""
LENGTHS = [18, 23, 28]  # each panel's prompt alone, in tokens

_CACHE: dict = {}


def qwen_story():
    """Tiny Qwen-Image CLIP (real tokenizer) and the two-character story: Bob | Alice | Bob and Alice."""
    if "clip" not in _CACHE:
        _CACHE["clip"] = dit_factory.tiny_qwen_image_clip()
        _CACHE["story"] = encode_story(_CACHE["clip"], STORY)
    return _CACHE["clip"], *_CACHE["story"]


def host_masks_text() -> bool:
    """Whether this host hands the conditioning's text mask to Qwen-Image's blocks (0.33.0 does)."""
    return submodule("nodes.text_batching").text_family(qwen_story()[0]).honoured


def isolated(model, clip, story, **kw):
    return isolated_helpers.isolated(model, clip, story, **{**NO_GUARDS, **kw})


def run(model, steps=3, **kw):
    clip, pos, neg, story, n = qwen_story()
    m = model if kw.get("strength", 1) is None else isolated(model, clip, story, **kw)
    return ksample(m, "qwen_image", panels=n, positive=pos, negative=neg, steps=steps), m


def test_token_positions_follow_the_template_prefix():
    """Each panel's plan counts the tokens the model gets (the encoded context: the template's
    prefix dropped) and points at the name's pieces there ('Bob' first, ' Alice' after 'and')."""
    clip, pos, neg, story, n = qwen_story()
    plan = submodule("nodes.qwen_tokens").qwen_plan("Isolated Attention", clip, story)
    hf = clip.tokenizer.qwen25_7b.tokenizer
    assert pos[0][0].shape[1] == max(LENGTHS) and plan.lengths == LENGTHS
    assert pos[0][1]["attention_mask"].sum(1).tolist() == LENGTHS  # padded on the right, masked
    for p, text in enumerate(story.encoded_prompts):
        cond = clip.encode_from_tokens(clip.tokenize(text), return_dict=True)["cond"]
        assert cond.shape[1] == plan.lengths[p]
        ids = [t[0] for t in clip.tokenize(text)["qwen25_7b"][0]]
        context = ids[len(ids) - plan.lengths[p] :]
        assert hf.decode(context).startswith(text)  # the context begins at the user's text
        for k, name in enumerate(plan.names):
            got = [hf.decode([context[j]]).strip() for j in plan.positions[p][k]]
            assert got == ([name] if story.tags[p].count(name) else []), (p, name, got)
    assert plan.positions[2] == [[0], [9]]


def test_strength_zero_and_steps_without_isolation_are_bit_identical():
    model = tiny_dit("qwen_image")
    plain, _ = run(model, strength=None)
    zero, m0 = run(model, strength=0.0)
    assert m0 is model and torch.equal(zero, plain)
    capture_only, m = run(model, end_percent=0.2)  # step 0 only: maps captured, nothing isolated
    assert state_of(m).run.result is not None and state_of(m).run.result.steps == 3
    assert torch.equal(capture_only, plain)
    isolating, m = run(model)
    assert not torch.allclose(isolating, plain, atol=1e-4), "isolation changed nothing"
    area = state_of(m).run.result.masks.float().mean((-1, -2))  # [panel, character]: Bob | Alice
    assert area[0, 0] > 0 and area[0, 1] == 0 and area[1, 0] == 0 and area[1, 1] > 0
    assert area[2].min() > 0


def test_isolation_is_exact_on_real_block_calls():
    """No attention weight from A's region to B's references, B's prompt, the sampler's prompt or
    A's own padding; A's own prompt seen; the background keeps the prompt and no reference. Where
    the host masks the text, no row of the original or the isolated branch weighs its panel's
    prompt padding (the panels' prompts have different lengths)."""
    bob, alice = halves()
    probe = Probe()
    _, m = run(probe.install(tiny_dit("qwen_image")), mask_1=bob, mask_2=alice)
    valid = state_of(m).config.character_lengths
    assert valid[0] == [18, 13, 20]  # Bob's regional prompts: own line, 'Bob, description', 'Bob, ... walk'
    masked = host_masks_text()
    calls = isolated_calls(probe)
    blocks = {rec[4] for _, rec in calls}
    assert blocks == {("double", i) for i in range(3)}
    n = GRID[0] * GRID[1]
    region = {0: bob.flatten() > 0, 1: alice.flatten() > 0}
    checked = backgrounds = padded = 0
    for panel, (q, k, _v, mask, _block, info) in calls:
        seg, L = info.segments, q.shape[2]
        start = L - n
        logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
        img = (logits + mask.double()).softmax(-1)[0, :, start:]  # [H, n, L + R] image rows
        present = [c for c in (0, 1) if info.tokens[panel, c].any()]
        assert present == {0: [0], 1: [1], 2: [0, 1]}[panel]
        refs = k.shape[2] - L
        assert refs == (n if panel == 2 else 0)
        for a in present:
            b = 1 - a
            w = img[:, region[a]]
            assert torch.equal(info.tokens[panel, a].cpu(), region[a])
            own = seg.of(a)
            used = (seg.valid[a] or [own.stop - own.start] * 3)[panel]
            assert w[..., : seg.prompt].abs().max() == 0  # the sampler's prompt: not seen
            assert w[..., seg.of(b)].abs().max() == 0  # B's prompt: not seen
            assert w[..., own.start + used : own.stop].abs().sum() == 0  # A's padding: not seen
            padded += own.stop - own.start - used
            assert w[..., own.start : own.start + used].sum(-1).min() > 0  # A's own prompt: seen
            if refs:
                mine = slice(L, L + n // 2) if a == 0 else slice(L + n // 2, L + n)
                theirs = slice(L + n // 2, L + n) if a == 0 else slice(L, L + n // 2)
                assert w[..., theirs].abs().max() == 0  # no weight from A's region to B's references
                assert w[..., mine].sum(-1).min() > 0
            checked += 1
        background = ~(region[0] & info.tokens[panel, 0].cpu()) & ~(region[1] & info.tokens[panel, 1].cpu())
        if background.any():
            w = img[:, background]
            assert w[..., seg.prompt : seg.text].abs().max() == 0 and w[..., L:].abs().sum() == 0
            assert w[..., : LENGTHS[panel]].sum(-1).min() > 0
            if masked:  # the prompt's padding: not seen (the host's mask kept)
                assert w[..., LENGTHS[panel] : seg.prompt].abs().sum() == 0
            backgrounds += 1
    assert checked >= 4 * len(blocks) and backgrounds >= 2 * len(blocks) and padded > 0
    originals = 0
    for q, k, _v, mask, _block, info in probe.calls:
        if q.shape[0] == 1 or info is None or info.segments is None:
            continue
        seg = info.segments
        logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
        w = (logits + mask.double()).softmax(-1)  # [B, H, L, L]: the original branch, every row
        for r in range(q.shape[0]):
            p = r % 3
            if masked:  # no row weighs its panel's prompt padding
                assert w[r, ..., LENGTHS[p] : seg.prompt].abs().sum() == 0, (r, "prompt padding")
            for s, lengths in enumerate(seg.valid):
                if lengths:  # no row weighs a segment's padding
                    assert w[r, ..., seg.span(s).start + lengths[p] : seg.span(s).stop].abs().sum() == 0
            start = q.shape[2] - GRID[0] * GRID[1]
            assert w[r, :, start:, seg.prompt : seg.text].abs().sum() == 0  # image rows: no segment
        originals += 1
    assert originals >= 2 * len(blocks)


def test_a_text_mask_that_does_not_fit_the_story_is_a_clear_error():
    """Where the host passes the text mask, a positive whose mask gives the panels other lengths
    than the story's prompts (here two panels' masks swapped) is refused, naming both."""
    if not host_masks_text():
        pytest.skip("this host drops the conditioning's text mask (ComfyUI 0.33.0 passes it)")
    clip, pos, neg, story, n = qwen_story()
    mask = pos[0][1]["attention_mask"]
    swapped = [[pos[0][0], {**pos[0][1], "attention_mask": mask[[1, 0, 2]]}]]
    m = isolated(tiny_dit("qwen_image"), clip, story)
    with pytest.raises(
        submodule("nodes.common").StoryError, match=r"text mask gives the panels \[23, 18, 28\]"
    ):
        ksample(m, "qwen_image", panels=n, positive=swapped, negative=neg, steps=1)


def alone_inputs(dm, ctx: torch.Tensor, latent_shape) -> dict:
    """The first block's text stream and positions as the real model builds them for a call whose
    context is `ctx` alone (Qwen's own txt_start and sequential text positions)."""
    seen = {}

    def grab(args, extra):
        seen.update(txt=args["txt"].clone(), pe=args["pe"].clone())
        return extra["original_block"](args)

    options = {"patches_replace": {"dit": {("double_block", 0): grab}}}
    with torch.no_grad():
        dm(torch.zeros(1, *latent_shape[1:]), torch.ones(1), ctx, transformer_options=options)
    return seen


def test_text_attention_in_a_region_is_the_characters_prompt_alone():
    """At the first block, in panel 0 (Bob, the shortest prompt: padded) and panel 2 (both
    characters): the keys/values A's region attends as text are those the block computes for A's
    regional prompt alone, at the positions Qwen gives that prompt alone (consecutive from its
    txt_start), and A's text stream leaves the block as it would alone beside this image."""
    bob, alice = halves()
    probe, seen = Probe(), {}
    model = tiny_dit("qwen_image")
    dm = model.get_model_object("diffusion_model")
    m = model.clone()

    def first_block(args, extra):
        info = args["transformer_options"].get("storydiff_joint_isolated")
        first = info is not None and info.segments is not None and "args" not in seen
        if first:
            seen["args"] = {key: val.clone() if torch.is_tensor(val) else val for key, val in args.items()}
        out = extra["original_block"](args)
        if first:
            seen["out"] = {key: val.clone() for key, val in out.items()}
        return out

    m.set_model_patch_replace(first_block, "dit", "double_block", 0)
    _, patched = run(probe.install(m), mask_1=bob, mask_2=alice)
    config = state_of(patched).config
    args = seen["args"]
    info = args["transformer_options"]["storydiff_joint_isolated"]
    seg = info.segments
    latent = dit_factory.empty_latent("qwen_image", 1, 8, 12).shape
    for panel, a in ((0, 0), (2, 0), (2, 1)):
        rec = next(r for p, r in isolated_calls(probe) if r[4] == ("double", 0) and p == panel)
        row = info.chunks.index(0) * 3 + panel  # cond chunk
        n = (config.character_lengths[a] or [config.characters[a].shape[1]] * 3)[panel]
        ctx = config.characters[a]
        ctx = (ctx[panel : panel + 1] if ctx.shape[0] > 1 else ctx)[:, :n]  # the regional prompt, unpadded
        alone = alone_inputs(dm, ctx, latent)
        span = seg.of(a)
        used = slice(span.start, span.start + n)
        assert torch.equal(args["pe"][row, :, used], alone["pe"][0, :, :n])  # its own text positions
        alone_pe = torch.cat([alone["pe"][:, :, :n], args["pe"][row : row + 1, :, seg.text :]], 2)
        got = {}

        def keep(func, *x, got=got, **kw):
            got["k"], got["v"] = x[1], x[2]
            return func(*x, **kw)

        with torch.no_grad():
            txt_out, _ = dm.transformer_blocks[0](
                hidden_states=args["img"][row : row + 1].clone(),
                encoder_hidden_states=alone["txt"],
                encoder_hidden_states_mask=None,
                temb=args["vec"][row : row + 1],
                image_rotary_emb=alone_pe,
                transformer_options={"optimized_attention_override": keep},
            )
        for got_t, iso_t in ((got["k"], rec[1]), (got["v"], rec[2])):
            err = float((iso_t[0, :, used] - got_t[0, :, :n]).abs().max())
            assert err < 1e-5, (panel, a, err)  # float32 rounding of different matmul shapes only
        err = float((seen["out"]["txt"][row, used] - txt_out[0]).abs().max())
        assert err < 1e-5, (panel, a, "block output", err)


class QwenForeign(Foreign):
    def install(self, model):
        m = model.clone()
        for i in range(len(model.get_model_object("diffusion_model").transformer_blocks)):
            m.set_model_patch_replace(self.make(("double_block", i)), "dit", "double_block", i)
        return m


def test_foreign_block_replace_before_and_after_runs_on_every_block_and_isolation_persists():
    model = tiny_dit("qwen_image")
    alone, _ = run(model, steps=2)
    before, after = QwenForeign(), QwenForeign()
    out_before, _ = run(before.install(model), steps=2)
    clip, pos, neg, story, n = qwen_story()
    m = after.install(isolated(model, clip, story))
    out_after = ksample(m, "qwen_image", panels=n, positive=pos, negative=neg, steps=2)
    blocks = len(model.get_model_object("diffusion_model").transformer_blocks)
    for probe in (before, after):
        assert len(probe.calls) == blocks and len(set(probe.calls.values())) == 1
    assert torch.equal(out_before, alone) and torch.equal(out_after, alone)


def test_a_clip_of_another_family_is_a_clear_error():
    from test_dit_isolated import flux_story

    clip, pos, neg, story, n = flux_story()
    node = submodule("nodes.isolated_attention").IsolatedAttention()
    with pytest.raises(submodule("nodes.common").StoryError, match="not Qwen-Image's text encoder"):
        node.patch(tiny_dit("qwen_image"), clip, story, 1.1, 1.0, 0.0, 1.0)
