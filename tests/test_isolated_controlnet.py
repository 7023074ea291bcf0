"""Isolated Attention composes with ControlNet (a tiny random ControlNet on the tiny SD1.5 UNet)."""

import pytest
import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.ops

from isolated_helpers import NO_GUARD, encode_story, isolated, sample, state_of
from tiny_models import factory


def tiny_controlnet(model):
    cfg = dict(factory.SD15_UNET)
    cfg.pop("out_channels")
    cfg.pop("transformer_depth_output", None)
    cfg.update(
        hint_channels=3,
        operations=comfy.ops.disable_weight_init,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    control = comfy.cldm.cldm.ControlNet(**cfg)
    factory._seeded_init_unet(control, 7)
    return comfy.controlnet.ControlNet(control, load_device=torch.device("cpu"))  # pixel hint, no VAE


def with_control(cond, cnet, hint):
    c = cnet.copy().set_cond_hint(hint, 0.8)
    return [[t, dict(meta, control=c, control_apply_to_uncond=True)] for t, meta in cond]


@pytest.fixture(scope="module")
def setup(tiny):
    model, clip, _ = tiny("sd15")
    pos, neg, story, P = encode_story(clip)
    cnet = tiny_controlnet(model)
    hint = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return model, clip, story, P, with_control(pos, cnet, hint), with_control(neg, cnet, hint), pos, neg


def test_controlnet_and_isolated_attention_compose(setup):
    model, clip, story, P, cpos, cneg, pos, neg = setup
    vanilla_cn = sample(model.clone(), cpos, cneg, P, steps=2, size=(8, 8))
    assert not torch.equal(
        vanilla_cn, sample(model.clone(), pos, neg, P, steps=2, size=(8, 8))
    )  # the CN acts
    idle = isolated(model, clip, story, start_percent=1.0, end_percent=1.0)
    assert torch.equal(sample(idle, cpos, cneg, P, steps=2, size=(8, 8)), vanilla_cn)
    active = isolated(model, clip, story, **NO_GUARD)
    out = sample(active, cpos, cneg, P, steps=2, size=(8, 8))
    assert torch.isfinite(out).all() and not torch.equal(out, vanilla_cn)
    masks = state_of(active).run.result.masks
    assert masks[0, 0].any() and masks[1, 1].any() and not (masks[2, 0] & masks[2, 1]).any()
