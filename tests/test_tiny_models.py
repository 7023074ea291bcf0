"""The tiny models have the real block layout of SD1.5 / SDXL / SVD (so hooks see real keys)."""

import torch

import comfy.sample


def _blocks(model, seen, family):
    """Record (block, block_index, n_heads, dim_head, context len) for every attn2 call in one step."""

    def record(n, context, value, extra):
        seen.append(
            (extra["block"], extra["block_index"], extra["n_heads"], extra["dim_head"], context.shape[-1])
        )
        return n, context, value

    m = model.clone()
    m.set_model_attn2_patch(record)
    return m


def _run(model, clip, latent=(1, 4, 16, 16), steps=1):
    tokens = clip.tokenize("a lighthouse")
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    cond = [[out["cond"], {"pooled_output": out["pooled_output"]}]]
    noise = torch.randn(latent, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(
        model, noise, steps, 1.0, "euler", "normal", cond, cond, torch.zeros(latent), seed=0
    )


def test_sdxl_shaped_layout(tiny):
    model, clip, _ = tiny("sdxl")
    seen = []
    _run(_blocks(model, seen, "sdxl"), clip)
    assert len(seen) == 70  # 70 BasicTransformerBlocks, as in SDXL
    keys = sorted({b for b, *_ in seen})
    assert keys == sorted(
        [("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0)]
        + [("output", i) for i in range(6)]
    )
    assert {c for *_, c in seen} == {2048}
    assert {d for *_, d, _ in seen} == {64}


def test_sd15_shaped_layout(tiny):
    model, clip, _ = tiny("sd15")
    seen = []
    _run(_blocks(model, seen, "sd15"), clip)
    assert len(seen) == 16
    assert {h for _, _, h, _, _ in seen} == {8}
    assert {c for *_, c in seen} == {768}


def test_odd_latent_sizes_round_up(tiny):
    model, clip, _ = tiny("sd15")
    shapes = []

    def record(n, context, value, extra):
        shapes.append(tuple(extra["activations_shape"][-2:]))
        return n, context, value

    m = model.clone()
    m.set_model_attn1_patch(record)
    _run(m, clip, latent=(1, 4, 10, 14))
    assert {(10, 14), (5, 7), (3, 4), (2, 2)} == set(shapes)


def test_svd_shaped_model_has_temporal_blocks(tiny):
    model, _, _ = tiny("svd")
    dm = model.model.diffusion_model
    names = [n for n, _ in dm.named_modules()]
    assert any(n.endswith("time_stack.0") for n in names)
    assert dm.in_channels == 8
