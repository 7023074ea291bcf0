"""The patching seam, seen from the graph: every feature composes with other packs' replaces in
any order and at any key granularity, replaces its own earlier patch, honours a kernel override,
and refuses model families it does not support with a clear error. Node-level API only."""

from collections import Counter

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention

from consistent_inputs import CSA_DEFAULTS
from isolated_helpers import encode_story, isolated, sample, with_attention_override
from pack_loader import submodule
from tiny_models import factory

ca = submodule("nodes.consistent_attention")
bank_nodes = submodule("nodes.identity_bank_nodes")
StoryError = submodule("nodes.common").StoryError

CSA_ALWAYS = dict(CSA_DEFAULTS, blocks="all", warmup_steps=0, apply_probability="1")


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip, _ = tiny("sd15")
    positive, negative, story, panels = encode_story(clip)
    return model, clip, positive, negative, story, panels


def halves(size=(16, 16)):
    left = torch.zeros(1, *size)
    left[..., : size[1] // 2] = 1.0
    return left, 1.0 - left


def transformer_blocks(model) -> set:
    """(block_name, block_id) of every UNet block holding a transformer (the 2-part replace keys)."""
    dm = model.get_model_object("diffusion_model")
    groups = (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks))
    return {
        (name, i)
        for name, blocks in groups
        for i, block in enumerate(blocks)
        if any(getattr(m, "transformer_blocks", None) for m in block)
    }


class Foreign:
    """Another pack's attn1 and attn2 replaces under 2-part keys (block, id): plain attention,
    counting the blocks they are called on."""

    def __init__(self):
        self.calls = {"attn1": Counter(), "attn2": Counter()}

    def replace(self, which):
        def fn(q, k, v, extra):
            self.calls[which][tuple(extra["block"])] += 1
            return comfy_attention.optimized_attention(q, k, v, extra["n_heads"], transformer_options=extra)

        return fn

    def apply(self, model, which):
        m = model.clone()
        setter = m.set_model_attn1_replace if which == "attn1" else m.set_model_attn2_replace
        for name, block_id in sorted(transformer_blocks(model)):
            setter(self.replace(which), name, block_id)
        return m


def csa_patch(model, clip, story):
    return ca.ConsistentSelfAttention().patch(model, **CSA_ALWAYS)[0]


def isolated_patch(model, clip, story):
    bob, alice = halves()
    return isolated(model, clip, story, strength=1.0, mask_1=bob, mask_2=alice)


ORDERS = [(a1, a2) for a1 in ("before", "after") for a2 in ("before", "after")]


@pytest.mark.parametrize("feature", [csa_patch, isolated_patch], ids=["consistent", "isolated"])
@pytest.mark.parametrize("attn1_when,attn2_when", ORDERS, ids=[f"attn1_{a}-attn2_{b}" for a, b in ORDERS])
def test_foreign_two_part_replaces_run_on_every_block_in_any_order(sd15, feature, attn1_when, attn2_when):
    model, clip, pos, neg, story, P = sd15
    foreign = Foreign()
    m = model
    for which, when in (("attn1", attn1_when), ("attn2", attn2_when)):
        if when == "before":
            m = foreign.apply(m, which)
    m = feature(m, clip, story)
    for which, when in (("attn1", attn1_when), ("attn2", attn2_when)):
        if when == "after":
            m = foreign.apply(m, which)
    out = sample(m, pos, neg, P, steps=3, size=(16, 16))
    blocks = transformer_blocks(model)
    for which in ("attn1", "attn2"):
        assert set(foreign.calls[which]) == blocks, (
            f"{which} foreign replace missed {blocks - set(foreign.calls[which])}"
        )
    only_foreign = foreign.apply(foreign.apply(model, "attn1"), "attn2")
    assert not torch.allclose(out, sample(only_foreign, pos, neg, P, steps=3, size=(16, 16)), atol=1e-4), (
        "the pack's patch must still act"
    )


def test_isolated_attention_twice_equals_once(sd15):
    model, clip, pos, neg, story, P = sd15
    once = isolated_patch(model, clip, story)
    twice = isolated_patch(isolated_patch(model, clip, story), clip, story)
    assert torch.equal(
        sample(twice, pos, neg, P, steps=3, size=(16, 16)), sample(once, pos, neg, P, steps=3, size=(16, 16))
    )


def test_kernel_override_reaches_the_isolated_branch(sd15):
    """Another pack's optimized_attention_override (set in transformer_options) sees the isolated
    branch's masked self-attention calls: the branch passes transformer_options to the kernel."""
    model, clip, pos, neg, story, P = sd15
    masked = []
    m = isolated_patch(
        with_attention_override(model, lambda q, k, v, heads, mask: masked.append(mask is not None)),
        clip,
        story,
    )
    sample(m, pos, neg, P, steps=3, size=(16, 16))
    assert sum(masked) > 0


def test_old_csa_percent_window_runs_as_the_fraction_window(sd15):
    model, clip, pos, neg, story, P = sd15
    assert ca.ConsistentSelfAttention.VALIDATE_INPUTS(0.0, 100.0) is True  # saved before fractions
    with pytest.raises(StoryError, match="end_percent"):  # checked once, when the node runs
        ca.ConsistentSelfAttention().patch(model, **dict(CSA_ALWAYS, end_percent=150.0))
    old = ca.ConsistentSelfAttention().patch(
        model, **dict(CSA_ALWAYS, start_percent=50.0, end_percent=100.0)
    )[0]
    new = ca.ConsistentSelfAttention().patch(model, **dict(CSA_ALWAYS, start_percent=0.5, end_percent=1.0))[0]
    plain = sample(model, pos, neg, P, steps=4)
    assert torch.equal(sample(old, pos, neg, P, steps=4), sample(new, pos, neg, P, steps=4))
    assert not torch.equal(sample(new, pos, neg, P, steps=4), plain)


def test_every_step_window_input_is_a_fraction(node_classes):
    for node_id, cls in node_classes.items():
        inputs = cls.INPUT_TYPES()
        for group in inputs.values():
            for name, spec in group.items():
                if name.endswith("_percent"):
                    assert spec[1]["max"] == 1.0, (node_id, name)


@pytest.fixture(scope="module")
def flux():
    """A DiT family none of the pack's nodes supports (AuraFlow; Flux runs CSA since the DiT module)."""
    return factory.tiny_unet("auraflow")


def test_unsupported_family_is_a_clear_error(flux, sd15):
    _, clip, _, _, story, _ = sd15
    calls = {
        "Consistent Self-Attention": lambda: ca.ConsistentSelfAttention().patch(flux, **CSA_ALWAYS),
        "Identity Bank Write": lambda: bank_nodes.IdentityBankWrite().sample(
            flux,
            names="Bob",
            positive=[],
            negative=[],
            latent_image={"samples": torch.zeros(1, 16, 8, 8)},
            seed=0,
            steps=1,
            cfg=1.0,
            sampler_name="euler",
            scheduler="normal",
        ),
        "Identity Bank Write (deprecated)": lambda: bank_nodes.IdentityBankWritePatch().patch(
            flux, names="Bob"
        ),
        "Identity Bank Read": lambda: bank_nodes.IdentityBankRead().patch(
            flux, bank_nodes.IdentityBank(), names="Bob"
        ),
        "Isolated Attention": lambda: isolated(flux, clip, story),
    }
    for node, call in calls.items():
        with pytest.raises(StoryError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(node) and "AuraFlow" in msg and "SDXL" in msg and "supported" in msg, msg
        assert "Flux.1" in msg and "Qwen-Image" in msg, msg  # the DiT families are listed too
        if node == "Isolated Attention":
            assert "Chroma" not in msg, msg  # isolation: Flux.1 and Qwen-Image only so far


def test_isolated_attention_refuses_a_video_unet(tiny, sd15):
    """SVD's context is an image embedding, not a story's text: no character tokens to isolate."""
    svd, _, _ = tiny("svd")
    _, clip, _, _, story, _ = sd15
    with pytest.raises(StoryError, match="Isolated Attention: this MODEL is a SVD_img2vid model.*SDXL"):
        isolated(svd, clip, story)
    assert (
        ca.ConsistentSelfAttention().patch(svd, **CSA_ALWAYS)[0] is not svd
    )  # CSA applies to SVD's spatial layers
