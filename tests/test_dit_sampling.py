"""Consistent Self-Attention on the tiny DiTs through the real node and core's KSampler."""

import pytest
import torch

from dit_helpers import ksample, tiny_dit
from pack_loader import submodule
from tiny_models import dit_factory

FAMILIES = sorted(dit_factory.DIT_FAMILIES)
ALWAYS = {"warmup_steps": 0, "apply_probability": "1", "blocks": "all"}


def csa(model, **overrides):
    node = submodule("nodes.consistent_attention").ConsistentSelfAttention()
    settings = {
        "keep_rate_1_8": 0.5,
        "keep_rate_1_16": 0.5,
        "keep_rate_1_32": 0.5,
        "keep_rate_1_64": 0.5,
        "blocks": "up",
        "warmup_steps": 1,
        "start_percent": 0.0,
        "end_percent": 1.0,
        "apply_probability": "0.7, 0.9@40",
        "window": 0,
        "seed": 0,
        "strength": 1.0,
    }
    settings.update(overrides)
    return node.patch(model, **settings)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_strength_zero_batch_of_one_keep_rate_zero(family):
    model = tiny_dit(family)
    plain = ksample(model, family, panels=3)
    assert torch.equal(ksample(csa(model, strength=0.0, **ALWAYS), family, panels=3), plain)
    zero = csa(model, keep_rate_double=0.0, keep_rate_single=0.0, **ALWAYS)
    assert torch.equal(ksample(zero, family, panels=3), plain)
    one = ksample(model, family, panels=1)
    assert torch.equal(ksample(csa(model, **ALWAYS), family, panels=1), one)
    shared = ksample(csa(model, **ALWAYS), family, panels=3)
    assert not torch.allclose(shared, plain, atol=1e-4), "sharing changed nothing"


class ForeignBlockReplace:
    """Another pack's `dit` block replace: counts its calls per block and runs the block it is given.
    With `reference`, it also computes each block's output with an independent dense attention."""

    def __init__(self, dm=None, grid=None, rope=True, tail=0):
        self.calls, self.errors, self.dm, self.grid, self.rope, self.tail = {}, [], dm, grid, rope, tail
        self.tails = set()

    def install(self, model):
        dm = model.get_model_object("diffusion_model")
        m = model.clone()
        d = len(
            getattr(dm, "double_blocks", None) or getattr(dm, "transformer_blocks", None) or dm.joint_blocks
        )
        s = len(getattr(dm, "single_blocks", []))
        for kind, count in (("double_block", d), ("single_block", s)):
            for i in range(count):
                m.set_model_patch_replace(self.make((kind, i)), "dit", kind, i)
        return m

    def make(self, key):
        def replace(args, extra):
            self.calls[key] = self.calls.get(key, 0) + 1
            ref = None
            if self.dm is not None:
                if "txt" in args:  # double blocks: the tokens after the image of this model call
                    self.tail = args["img"].shape[1] - self.grid[0] * self.grid[1]
                    self.tails.add(self.tail)
                topts = dict(args["transformer_options"])
                chunks = len(topts.get("cond_or_uncond") or [0])
                topts["optimized_attention_override"] = dit_helpers.dense_reference_override(
                    self.dm, self.grid, chunks, args.get("pe"), self.tail, self.rope
                )
                ref = dit_helpers.raw_block_call(self.dm, key, args, topts)
            out = extra["original_block"](args)
            if ref is not None:
                for name, t in ref.items():
                    if t is None:  # SD3's last block returns no text
                        continue
                    self.errors.append((key, name, float((out[name] - t).abs().max())))
            return out

        return replace


import dit_helpers  # noqa: E402

RUN_FAMILIES = ["flux", "flux2", "chroma", "qwen_image", "sd35"]


@pytest.mark.parametrize("family", RUN_FAMILIES)
def test_keep_rate_one_equals_dense_joint_attention_on_real_block_calls(family):
    model = tiny_dit(family)
    dm = model.get_model_object("diffusion_model")
    p = dm.patch_size
    grid = (-(-8 // p), -(-12 // p))
    probe = ForeignBlockReplace(dm, grid, rope=family != "sd35")
    m = csa(probe.install(model), keep_rate_double=1.0, keep_rate_single=1.0, **ALWAYS)
    ksample(m, family, panels=3, steps=2)
    assert probe.errors and len({e[0] for e in probe.errors}) == len(probe.calls)
    worst = max(e[2] for e in probe.errors)
    print(family, "worst block-output error vs dense reference:", worst)
    assert worst < 1e-5, sorted(probe.errors, key=lambda e: -e[2])[:3]


@pytest.mark.parametrize("family", ["flux", "qwen_image", "sd35", "chroma"])
def test_foreign_block_replace_before_and_after_runs_on_every_block_and_sharing_persists(family):
    model = tiny_dit(family)
    alone = ksample(csa(model, **ALWAYS), family, panels=3, steps=2)
    plain = ksample(model, family, panels=3, steps=2)
    before, after = ForeignBlockReplace(), ForeignBlockReplace()
    out_before = ksample(csa(before.install(model), **ALWAYS), family, panels=3, steps=2)
    out_after = ksample(after.install(csa(model, **ALWAYS)), family, panels=3, steps=2)
    dm = model.get_model_object("diffusion_model")
    blocks = len(
        getattr(dm, "double_blocks", None) or getattr(dm, "transformer_blocks", None) or dm.joint_blocks
    )
    blocks += len(getattr(dm, "single_blocks", []))
    for probe in (before, after):
        assert (
            len(probe.calls) == blocks
            and len(set(probe.calls.values())) == 1
            and min(probe.calls.values()) >= 2
        )
    assert torch.equal(out_before, alone) and torch.equal(out_after, alone)
    assert not torch.allclose(alone, plain, atol=1e-4)


def test_applying_twice_equals_once_and_the_input_model_is_untouched():
    model = tiny_dit("flux")
    once = csa(model, **ALWAYS)
    twice = csa(csa(model, seed=5, **ALWAYS), **ALWAYS)
    assert torch.equal(ksample(once, "flux", panels=3, steps=2), ksample(twice, "flux", panels=3, steps=2))
    assert "dit" not in model.model_options["transformer_options"].get("patches_replace", {})


def test_reference_latent_tokens_stay_own_only_on_flux_kontext_layout():
    """A reference latent (Kontext / ReferenceLatent) appends tokens after the image: they are
    keys of their own panel only, never shared; keep-rate 1 still equals the dense reference."""
    import node_helpers

    model = tiny_dit("flux")
    dm = model.get_model_object("diffusion_model")
    ref = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(3))
    positive = node_helpers.conditioning_set_values(
        dit_factory.conditioning("flux", 3, seed=1), {"reference_latents": [ref]}, append=True
    )
    probe = ForeignBlockReplace(dm, (4, 6))
    m = csa(probe.install(model), keep_rate_double=1.0, keep_rate_single=1.0, **ALWAYS)
    ksample(m, "flux", panels=3, steps=2, positive=positive)
    worst = max(e[2] for e in probe.errors)
    assert len(probe.calls) == 5 and worst < 1e-5, worst
    assert probe.tails == {0, 6}  # the cond chunk carries the reference; the uncond one runs apart


def test_isolated_attention_on_a_dit_other_than_flux1_is_the_family_error():
    """Isolation is built for Flux.1 and Qwen-Image among the DiTs: Chroma is refused, naming both."""
    from isolated_helpers import encode_story, isolated
    from tiny_models import dit_factory

    clip = dit_factory.tiny_flux_clip()
    _, _, story, _ = encode_story(clip)
    with pytest.raises(submodule("nodes.common").StoryError) as e:
        isolated(tiny_dit("chroma"), clip, story)
    msg = str(e.value)
    assert (
        msg.startswith("Isolated Attention") and "Flux.1" in msg and "SDXL" in msg and "supported" in msg
    ), msg
    assert "Qwen-Image" in msg, msg


def test_z_image_keep_rate_one_equals_dense_joint_attention_on_real_layer_calls():
    """Z-Image/Lumina 2 has no block replaces: a forward hook on each main layer's attention module
    recomputes q, k, v from its input with the module's weights and compares the module's output
    with an explicit softmax over own tokens + every other panel's image tokens at canvas positions."""
    model = tiny_dit("z_image")
    dm = model.get_model_object("diffusion_model")
    gh, gw, cap = 4, 6, 32  # 8x12 latent, patch 2; 16 caption tokens padded to 32
    img, chunks = gh * gw, 2
    errors, handles = [], []

    def hook(module, args, kwargs, out):
        x, freqs = args[0], args[2]
        b, n, _ = x.shape
        if n != cap + img + (-img) % 32:
            return  # a refiner layer (caption or image alone)
        heads, d = module.n_local_heads, module.head_dim
        with torch.no_grad():
            q, k, v = torch.split(module.qkv(x), [heads * d, heads * d, heads * d], dim=-1)
            q = module.q_norm(q.view(b, n, heads, d))
            k = module.k_norm(k.view(b, n, heads, d))
            v = v.view(b, n, heads, d)
            rot = freqs[0, :, 0].double()  # [n, D/2, 2, 2]

            def rope(t, r):  # t [L, H, D] at rotations r [L, D/2, 2, 2]
                pairs = t.double().reshape(*t.shape[:-1], -1, 2)
                return torch.einsum("lrab,lhrb->lhra", r, pairs).reshape(t.shape)

            qr, kr = (torch.stack([rope(t[i], rot) for i in range(b)]) for t in (q, k))
            images = b // chunks
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            ref = torch.empty(b, n, heads * d, dtype=torch.float64)
            for row in range(b):
                c, i = divmod(row, images)
                keys, values = [kr[row]], [v[row].double()]
                for m, j in enumerate(j for j in range(images) if j != i):
                    other = c * images + j
                    ids = torch.stack([torch.full((img,), cap + 1.0), ys.flatten().float(),
                                       xs.flatten().float() + (m + 1) * gw], 1)  # fmt: skip
                    fresh = dm.rope_embedder(ids.unsqueeze(0))[0, 0].double()
                    keys.append(rope(k[other][cap : cap + img], fresh))
                    values.append(v[other][cap : cap + img].double())
                kk, vv = torch.cat(keys), torch.cat(values)  # [L, H, D]
                w = torch.einsum("qhd,khd->hqk", qr[row], kk) / d**0.5
                ref[row] = torch.einsum("hqk,khd->qhd", w.softmax(-1), vv).reshape(n, -1)
            expected = module.out(ref.float())
        errors.append(float((out - expected).abs().max()))

    for layer in dm.layers:
        handles.append(layer.attention.register_forward_hook(hook, with_kwargs=True))
    try:
        ksample(csa(model, keep_rate_double=1.0, **ALWAYS), "z_image", panels=3, steps=2)
    finally:
        for h in handles:
            h.remove()
    assert len(errors) == 2 * len(dm.layers), len(errors)  # 2 steps, cond and uncond in one call
    assert max(errors) < 1e-5, max(errors)


def test_story_aware_sharing_on_a_dit():
    """The story input on a DiT (tiny Flux.1): an [NC] panel neither gives nor takes, bit for bit."""
    import comfy.sample

    from pack_loader import pure

    family = "flux"
    story = pure("story.syntax").parse_story("[Bob]: a man\n[Bob] waits\n[NC] a street\n[Bob] runs")
    m = csa(tiny_dit(family), story=story, **ALWAYS)
    pos = dit_factory.conditioning(family, 3, seed=1)
    neg = dit_factory.conditioning(family, 3, seed=2)
    latent = dit_factory.empty_latent(family, 3, 8, 12)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def run(n):
        return comfy.sample.sample(m, n, 2, 2.0, "euler", "simple", pos, neg, latent, seed=0)

    base = run(noise)
    other = noise.clone()
    other[1] = torch.randn(noise.shape[1:], generator=torch.Generator().manual_seed(9))
    out = run(other)
    assert torch.equal(out[[0, 2]], base[[0, 2]])  # the [NC] panel gives to nobody
    other = noise.clone()
    other[0] = torch.randn(noise.shape[1:], generator=torch.Generator().manual_seed(9))
    out = run(other)
    assert torch.equal(out[1], base[1]) and not torch.equal(out[2], base[2])  # ...takes from nobody
