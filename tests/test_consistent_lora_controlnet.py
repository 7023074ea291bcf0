"""Consistent Self-Attention on a MODEL that also carries a LoRA (through ComfyUI's own LoRA
loader) and under a ControlNet: the attention patch and the weight/residual patches compose."""

import pytest
import torch

import comfy.sample
import comfy.sd

from test_consistent_sampling import conds, csa
from test_isolated_controlnet import tiny_controlnet, with_control

ACTIVE = dict(warmup_steps=0, apply_probability="1")


def lora_state_dict(model, rank=4, seed=3):
    """A random LoRA on every attn1 q/k/v of the output blocks, in the kohya key format."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in model.model.diffusion_model.named_modules():
        if name.startswith("output_blocks") and name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v")):
            key = "lora_unet_" + name.replace(".", "_")
            out_f, in_f = module.weight.shape
            sd[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * 0.5
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.5
            sd[f"{key}.alpha"] = torch.tensor(float(rank))
    assert sd, "the tiny model has output-block attention layers"
    return sd


def with_lora(model, sd):
    patched, _ = comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0.0)
    return patched


def run(model, pos, neg, n=3, steps=2, hw=8):
    latent = torch.zeros(n, 4, hw, hw)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", pos, neg, latent, seed=0)


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip, _ = tiny("sd15")
    return model, clip, conds(clip, 3)


def test_lora_and_csa_compose_in_either_order(sd15):
    model, _, c = sd15
    sd = lora_state_dict(model)
    lora = with_lora(model, sd)
    vanilla, lora_only = run(model, c, c), run(lora, c, c)
    assert not torch.equal(vanilla, lora_only)  # the LoRA acts
    assert torch.equal(run(csa(lora, strength=0.0), c, c), lora_only)  # parity on a LoRA model
    lora_then_csa = run(csa(lora, **ACTIVE), c, c)
    assert not torch.equal(lora_then_csa, lora_only) and torch.isfinite(lora_then_csa).all()
    # weights and attention hooks commute: LoRA loaded after CSA gives the very same latents
    assert torch.equal(run(with_lora(csa(model, **ACTIVE), sd), c, c), lora_then_csa)


def test_controlnet_and_csa_compose(sd15):
    model, _, c = sd15
    cnet = tiny_controlnet(model)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cpos, cneg = with_control(c, cnet, hint), with_control(c, cnet, hint)
    cn_only = run(model.clone(), cpos, cneg)
    assert not torch.equal(cn_only, run(model.clone(), c, c))  # the ControlNet acts
    assert torch.equal(run(csa(model, strength=0.0), cpos, cneg), cn_only)
    both = run(csa(model, **ACTIVE), cpos, cneg)
    assert torch.isfinite(both).all() and not torch.equal(both, cn_only)
    assert not torch.equal(both, run(csa(model, **ACTIVE), c, c))  # the ControlNet still acts under CSA
