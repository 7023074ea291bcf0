"""Consistent Self-Attention through real ComfyUI sampling on tiny SD1.5/SDXL-shaped models."""

import pytest
import torch

import comfy.sample

from consistent_inputs import CSA_DEFAULTS
from pack_loader import pure, submodule

ca = submodule("nodes.consistent_attention")
core = submodule("nodes.patch_core")
unet = submodule("families.unet")
run_mod = submodule("attention.consistent_run")

BASE = dict(CSA_DEFAULTS)
ALWAYS = dict(BASE, warmup_steps=0, apply_probability="1", blocks="all")


def csa(model, **kw):
    return ca.ConsistentSelfAttention().patch(model, **dict(BASE, **kw))[0]


def conds(clip, n, text="a man in a red jacket"):
    out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
    return [[out["cond"].repeat(n, 1, 1), {"pooled_output": out["pooled_output"].repeat(n, 1)}]]


def sample(model, clip, n=3, steps=2, cfg=5.0, sampler="euler", hw=8, seed=0, callback=None):
    c = conds(clip, n)
    h, w = (hw, hw) if isinstance(hw, int) else hw  # an int for square latents, or (h, w)
    latent = torch.zeros(n, 4, h, w)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, "normal", c, c, latent, seed=seed, callback=callback
    )


def close(a, b, rel=1e-5):
    """Equal up to float reordering noise (batched vs split BLAS calls), relative to the latent scale."""
    return float((a - b).abs().max()) <= rel * float(b.abs().max())


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip, _ = tiny("sd15")
    return model, clip, sample(model, clip)


def test_parity_strength_zero_keep_rate_zero_disabled_range_and_batch_of_one(sd15):
    model, clip, vanilla = sd15
    assert torch.equal(sample(csa(model, strength=0.0), clip), vanilla)
    zero = {f"keep_rate_1_{d}": 0.0 for d in (8, 16, 32, 64)}
    assert torch.equal(sample(csa(model, **dict(ALWAYS, **zero)), clip), vanilla)
    assert torch.equal(sample(csa(model, **dict(ALWAYS, start_percent=1.0)), clip), vanilla)
    single = sample(model, clip, n=1)
    assert torch.equal(sample(csa(model, **ALWAYS), clip, n=1), single)
    assert not torch.equal(sample(csa(model), clip), vanilla)  # and the patch does act on a story batch


def test_same_seed_same_output_and_seed_matters(sd15):
    model, clip, _ = sd15
    m = csa(model, seed=7)
    a = sample(m, clip)
    assert torch.equal(a, sample(csa(model, seed=7), clip))
    assert not torch.equal(a, sample(csa(model, seed=8), clip))


def test_interrupted_run_leaves_nothing_stale(sd15):
    model, clip, _ = sd15
    m = csa(model, **dict(ALWAYS, keep_rate_1_8=0.3))
    patch = core.installed(m, "consistent")

    def stop(step, *args):
        if step == 1:
            raise KeyboardInterrupt("user pressed cancel")

    with pytest.raises(KeyboardInterrupt):
        sample(m, clip, callback=stop)
    assert patch.state.indices == {}
    assert torch.equal(sample(m, clip), sample(csa(model, **dict(ALWAYS, keep_rate_1_8=0.3)), clip))


def test_cfg1_split_cfg_and_multi_call_samplers(sd15):
    model, clip, _ = sd15
    m = csa(model)
    for kw in (dict(cfg=1.0), dict(sampler="heun")):
        a = sample(m, clip, steps=2, **kw)
        assert torch.isfinite(a).all() and torch.equal(a, sample(csa(model), clip, steps=2, **kw))
    assert not torch.equal(a, sample(model, clip, steps=2, sampler="heun"))
    # low-memory split: cond and uncond in separate model calls gives the same result as batched
    import comfy.samplers

    def separately(args):
        return [
            comfy.samplers.calc_cond_batch(
                args["model"], [c], args["input"], args["sigma"], args["model_options"]
            )[0]
            for c in args["conds"]
        ]

    split = m.clone()
    split.set_model_sampler_calc_cond_batch_function(separately)
    assert close(sample(split, clip, steps=2), sample(m, clip, steps=2))


def _module_path(block, index):
    name, bid = block
    prefix = {"input": f"input_blocks.{bid}", "output": f"output_blocks.{bid}", "middle": "middle_block"}[
        name
    ]
    return f"diffusion_model.{prefix}.1.transformer_blocks.{index}.attn1"


@pytest.mark.parametrize("hw", [8, (10, 14)], ids=["square", "odd-non-square"])
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_keep_rate_one_equals_dense_attention_over_all_story_images(tiny, family, hw):
    model, clip, _ = tiny(family)
    rates = {f"keep_rate_1_{d}": 1.0 for d in (8, 16, 32, 64)}
    m = csa(model, **dict(ALWAYS, **rates))
    checked = []

    def grab(n, context, value, extra):
        extra["probe_n"] = n
        return n, context, value

    def compare(out, extra):
        n = extra["probe_n"]
        attn = m.get_model_object(_module_path(extra["block"], extra["block_index"]))
        heads, b = extra["n_heads"], len(extra["cond_or_uncond"])
        with torch.no_grad():
            q, k, v = attn.to_q(n).double(), attn.to_k(n).double(), attn.to_v(n).double()
            ref = []
            for qc, kc, vc in zip(q.chunk(b), k.chunk(b), v.chunk(b), strict=False):
                allk = kc.reshape(1, -1, kc.shape[-1]).expand(qc.shape[0], -1, -1)
                allv = vc.reshape(1, -1, vc.shape[-1]).expand(qc.shape[0], -1, -1)
                d = qc.shape[-1] // heads
                qh, kh, vh = (
                    t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (qc, allk, allv)
                )
                p = (qh @ kh.transpose(-1, -2) * d**-0.5).softmax(-1)
                ref.append((p @ vh).transpose(1, 2).reshape(qc.shape))
            ref = attn.to_out(torch.cat(ref).float())
        checked.append((out - ref).abs().max().item())
        return out

    probe = m.clone()
    probe.model_options["transformer_options"]["patches"]["attn1_patch"].insert(0, grab)
    probe.set_model_attn1_output_patch(compare)
    sample(probe, clip, n=3, steps=1, hw=hw)  # (10, 14): blocks at 10x14, 5x7, 3x4, 2x2 tokens
    assert len(checked) == (16 if family == "sd15" else 70) * 1
    assert max(checked) < 1e-5


def test_composes_with_other_attn1_patches_and_attn2_replaces(sd15):
    model, clip, _ = sd15
    calls = {"p1": 0, "r2": 0, "r1": 0, "extended": 0}

    def p1(n, context, value, extra):
        calls["p1"] += 1
        return n * 0.9, context, value

    def r2(q, k, v, extra):
        import comfy.ldm.modules.attention as A

        calls["r2"] += 1
        return A.optimized_attention(q, k * 1.1, v, extra["n_heads"])

    def r1(q, k, v, extra):
        import comfy.ldm.modules.attention as A

        calls["r1"] += 1
        calls["extended"] += k.shape[1] > q.shape[1]
        return A.optimized_attention(q, k, v, extra["n_heads"])

    def add_others(m):
        m = m.clone()
        m.set_model_attn1_patch(p1)
        for key in (layer.key for layer in unet.attention_layers(m)):
            m.set_model_attn2_replace(r2, *key)
        return m

    before = csa(add_others(model), **ALWAYS)
    after = add_others(csa(model, **ALWAYS))
    a, b = sample(before, clip, steps=2), sample(after, clip, steps=2)
    assert calls["p1"] > 0 and calls["r2"] > 0
    assert close(a, b)
    assert not close(a, sample(add_others(model), clip, steps=2), 1e-3)  # CSA still acts

    wrapped = model.clone()
    for key in (layer.key for layer in unet.attention_layers(wrapped)):
        wrapped.set_model_attn1_replace(r1, *key)
    out = sample(csa(wrapped, **ALWAYS), clip, steps=2)
    assert calls["r1"] > 0 and calls["extended"] > 0  # the earlier replace runs, on the gathered keys
    assert close(out, sample(csa(model, **ALWAYS), clip, steps=2))
    # re-patching replaces our own patch instead of stacking it
    twice = csa(csa(model, **dict(ALWAYS, seed=3)), **ALWAYS)
    assert torch.equal(sample(twice, clip, steps=2), sample(csa(model, **ALWAYS), clip, steps=2))


StoryError = submodule("nodes.common").StoryError


def test_bad_schedule_is_one_clear_error():
    with pytest.raises(StoryError) as e:
        ca.config_from(dict(BASE, apply_probability="0.7, 0.9"))
    msg = str(e.value)
    assert "Consistent Self-Attention" in msg and "apply_probability" in msg and "@percent" in msg
    # queue-time checks and the window's order: tests/test_validation_messages.py


def test_plan_skips_svd_temporal_calls_and_blocks_not_chosen():
    always = pure("attention.token_sampling").ProbabilitySchedule(((0.0, 1.0),))
    glue = submodule("nodes.patch_consistent_unet")
    patch = glue.UNetConsistentPatch(run_mod.ConsistentConfig(warmup_steps=0, schedule=always))
    patch.groups = submodule("families.unet").UNET.blocks("up")  # as layer_hooks sets it at install
    extra = {
        "block": ("output", 3),
        "block_index": 0,
        "activations_shape": (4, 8, 4, 4),
        "original_shape": (4, 4, 8, 8),
        "cond_or_uncond": [1, 0],
        "sigmas": torch.tensor([1.0, 1.0]),
        "sample_sigmas": torch.tensor([2.0, 1.0, 0.0]),
    }
    plan = patch.plan(4, 16, dict(extra))
    assert plan is not None and plan.images == 2 and plan.layer == ("output", 3, 0) and plan.sigma == 1.0
    assert plan.active and plan.indices.shape == (2, 8)  # keep-rate 0.5 at 1/16 (latent/2)
    assert patch.plan(32, 2, dict(extra)) is None  # SVD temporal call: rows = chunks*h*w, tokens = frames
    assert patch.plan(4, 16, dict(extra, block=("input", 4))) is None  # 'up' blocks only by default


def test_deep_shrink_by_a_factor_that_is_not_a_power_of_two_still_shares(sd15):
    """Kohya Deep Shrink (core PatchModelAddDownscale) x1.5 for the whole run: the up blocks run
    at 5x5 and 3x3 instead of 4x4 and 2x2; every one of them must still share tokens."""
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    model, clip, _ = sd15
    shrunk = PatchModelAddDownscale.execute(model, 3, 1.5, 0.0, 1.0, True, "bicubic", "bicubic").result[0]
    m = csa(shrunk, **dict(ALWAYS, blocks="up"))
    patch = core.installed(m, "consistent")  # its plan(rows, tokens, extra): one per block call
    seen = {}
    plan = patch.plan

    def spy(rows, tokens, extra):
        p = plan(rows, tokens, extra)
        if p is not None:
            seen.setdefault((p.layer, tokens), set()).add(p.indices is not None and p.indices.shape[1] > 0)
        return p

    patch.plan = spy
    out = sample(m, clip, steps=2, hw=16)
    assert torch.isfinite(out).all()
    sizes = {tokens for _, tokens in seen}
    assert {9, 25} <= sizes  # the shrunk sizes were really met
    assert all(shared == {True} for shared in seen.values()), {k: v for k, v in seen.items() if v != {True}}
